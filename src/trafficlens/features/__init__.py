"""Features: a session's packets turned into the tensors models read."""
