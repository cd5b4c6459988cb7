"""Which finished sessions become examples: the filters and the label policy, once for both engines.

A session is rejected, in this order of precedence, for having no payload, fewer kept packets
than `min_packets`, fewer payload bytes than `min_bytes`, or (with `unlabeled="drop"`) no label.
"""

from __future__ import annotations

import numpy as np

# Reject reasons: code (the compiled engine's), name (manifest counts), and what predict says.
REJECT_CODES = ("", "empty_sessions", "min_packets", "min_bytes", "unlabeled")
REJECTS = {
    "empty_sessions": "no payload",
    "min_packets": "fewer packets than the model's min_packets",
    "min_bytes": "fewer payload bytes than the model's min_bytes",
    "unlabeled": "no label",
}


def reject_reason(payload_bytes: int, packets: int, config) -> str | None:
    """The filter a session fails first, or None."""
    if payload_bytes == 0:
        return "empty_sessions"
    if packets < config.min_packets:
        return "min_packets"
    if payload_bytes < config.min_bytes:
        return "min_bytes"
    return None


def reject_codes(payload_bytes: np.ndarray, packets: np.ndarray, config) -> np.ndarray:
    """`reject_reason` for many sessions: an index into REJECT_CODES each (0: kept)."""
    reason = np.zeros(len(payload_bytes), np.int8)
    reason[payload_bytes < config.min_bytes] = 3
    reason[packets < config.min_packets] = 2
    reason[payload_bytes == 0] = 1
    return reason


def unlabeled_fill(config) -> tuple[bool, str | None]:
    """(drop unlabeled sessions?, the label to give them instead) under `config.unlabeled`."""
    if config.unlabeled.startswith("as:"):
        return False, config.unlabeled[3:]
    return config.unlabeled == "drop", None
