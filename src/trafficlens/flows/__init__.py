"""Flows: decoded packets grouped into sessions (both directions) or flows (one direction)."""
