"""Flow identifiers other tools write, so that our rows join theirs.

`community_id`: the Community ID v1 flow hash (https://github.com/corelight/community-id-spec),
the `community_id` column of Zeek, Suricata, nfstream and Arkime. Both directions of a flow give
the same value. `zeek_uid`: an identifier shaped like Zeek's connection `uid` (C + base62).

    >>> community_id("tcp", "128.232.110.120", 34855, "66.35.250.204", 80)
    '1:LQU9qZlK+B5F3KDmev6m5PMibrg='
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import socket
import struct

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmp6": 58, "sctp": 132}
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def community_id(protocol: str | int, src_ip: str, src_port: int, dst_ip: str, dst_port: int, seed: int = 0) -> str:
    """Community ID v1 of a TCP/UDP/SCTP flow: "1:" + base64(SHA-1(seed, addresses, protocol,
    ports)), endpoints in canonical order (the smaller address first; the smaller port when the
    addresses are equal), so the value is the same from either end."""
    proto = PROTOCOLS[protocol.lower()] if isinstance(protocol, str) else int(protocol)
    a, b = _packed(src_ip), _packed(dst_ip)
    if len(a) != len(b):
        raise ValueError(f"community_id: {src_ip} and {dst_ip} are of different IP versions")
    pa, pb = int(src_port), int(dst_port)
    if not (a < b or (a == b and pa <= pb)):
        a, b, pa, pb = b, a, pb, pa
    data = struct.pack("!H", seed) + a + b + struct.pack("!BBHH", proto, 0, pa, pb)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")


def _packed(address: str) -> bytes:
    """An address's bytes: by the C parser (live decides tens of thousands of sessions a second,
    and `ipaddress` took a tenth of its inference thread), by `ipaddress` for what it refuses."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, address)
        except (OSError, TypeError):
            pass
    return ipaddress.ip_address(address).packed  # a ValueError names what is wrong


def zeek_uid(*parts: object) -> str:
    """A Zeek-style connection uid ("C" + 17 base62 characters, 96 bits), derived from `parts`
    (capture, community id, start time): the same session gets the same uid on every run, where
    Zeek draws a random one."""
    number = int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:12], "big")
    chars = []
    for _ in range(17):  # 62**17 > 2**96
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return "C" + "".join(reversed(chars))
