"""The small error hierarchy of trafficlens.

Every error a user can cause derives from `TrafficlensError`; the CLI prints its message on one
line and exits non-zero, so messages name the file or parameter and the problem.
"""


class TrafficlensError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""


class CaptureError(TrafficlensError):
    """A file that cannot be read as a capture at all (not pcap/pcapng, unreadable)."""


class DatasetError(TrafficlensError):
    """A dataset directory that is missing, incomplete or of another format version."""


class BundleError(TrafficlensError):
    """A model bundle (run directory) that is missing files, tampered or incompatible."""


class ConfigError(TrafficlensError):
    """A setting with a value outside what it accepts."""
