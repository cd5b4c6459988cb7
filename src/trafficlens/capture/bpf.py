"""`--filter EXPRESSION` on capture files: which packets a BPF expression keeps, as tcpdump does.

The expression goes through libpcap's own compiler (pcapy-ng's `compile`) rather than a subset
re-implemented here: it then means exactly what it means to tcpdump and Wireshark (`vlan`,
`ip6 protochain`, `tcp[tcpflags]`, every link type libpcap knows), there is no second grammar to
keep in step, and a bad expression gets libpcap's own diagnosis. pcapy-ng's wheels bundle
libpcap, so it installs from PyPI without system headers, and `live -i` already needs it. The
price is one C call per packet, small beside decoding it.

    >>> keep = PacketFilter("tcp port 443 and not host 10.0.0.1")
    >>> keep.matches(frame, linktype=1)
    True
"""

from __future__ import annotations

from trafficlens.capture import linktypes
from trafficlens.errors import CaptureError, ConfigError

_SNAPLEN = 262144
# LINKTYPE_* values (in files) whose libpcap DLT_* differs; the others are the same number
_DLT_OF = {linktypes.RAW: 12, linktypes.RAW_LEGACY_14: 12}  # DLT_RAW on Linux builds of libpcap


def _pcapy():
    try:
        import pcapy
    except ImportError:
        raise ConfigError("--filter needs pcapy-ng (libpcap's filter compiler): pip install 'trafficlens[live]'") from None
    return pcapy


class PacketFilter:
    """A compiled BPF expression, checked at once (on Ethernet) so that a typo fails before any
    capture is read; programs for other link types are compiled when first needed."""

    def __init__(self, expression: str):
        if not expression.strip():
            raise ConfigError("--filter is empty: give a BPF expression, e.g. 'tcp port 443'")
        self.expression = expression
        self._programs: dict[int, object] = {}
        self._program(linktypes.ETHERNET, check=True)

    def __repr__(self) -> str:
        return f"PacketFilter({self.expression!r})"

    def __reduce__(self):  # compiled programs do not pickle; worker processes compile their own
        return (PacketFilter, (self.expression,))

    def _program(self, linktype: int, check: bool = False):
        program = self._programs.get(linktype)
        if program is None:
            pcapy = _pcapy()
            try:
                program = pcapy.compile(_DLT_OF.get(linktype, linktype), _SNAPLEN, self.expression, 1, 0xFFFFFFFF)
            except pcapy.PcapError as exc:
                problem = " ".join(str(exc).split())
                if check:
                    raise ConfigError(f"--filter {self.expression!r}: {problem}") from None
                raise CaptureError(f"--filter {self.expression!r}: not usable on link type {linktype} ({problem})") from None
            self._programs[linktype] = program
        return program

    def matches(self, data: bytes, linktype: int) -> bool:
        """Whether the expression keeps this frame (its captured bytes, from the link header on)."""
        return self._program(linktype).filter(data) > 0
