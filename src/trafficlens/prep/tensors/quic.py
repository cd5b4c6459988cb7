"""QUIC packet headers in a UDP datagram: where the connection IDs and tokens are, to mask them.

Connection IDs are random values each endpoint picks per connection; `strict` masking zeroes
them (the length bytes stay). An Initial packet's token (mask version 3) is one a server gave
this client earlier (NEW_TOKEN) or in a Retry: like a TLS session ticket it ties a client's
connections together, so it is zeroed too. A long header (RFC 8999: first bit set, version, DCID length,
DCID, SCID length, SCID) carries both; a short header carries only the destination ID, and
not its length: that is the length of the source ID the peer chose, seen in the peer's long
headers earlier in the session, so callers learn it (`scid_length`) and pass it on.

Only known versions are read (QUIC v1 and v2, IETF drafts 22-34, mvfst, Google's Q050, T050
and T051, greased versions, and version negotiation), so other UDP protocols whose first byte
happens to look like a long header are left alone. Coalesced packets are followed for the
versions whose packet layout is known (v1, v2, drafts, mvfst).
"""

from __future__ import annotations

MAX_CID = 20  # QUIC v1 connection IDs are at most 20 bytes
_NOT, _WALK_V1, _WALK_V2, _FIRST_ONLY, _NEGOTIATION = 0, 1, 2, 3, 4


def _version_kind(version: int) -> int:
    if version == 1 or 0xFF000016 <= version <= 0xFF000022 or version >> 8 == 0xFACEB0:
        return _WALK_V1
    if version == 0x6B3343CF:
        return _WALK_V2
    if version in (0x51303530, 0x54303530, 0x54303531) or version & 0x0F0F0F0F == 0x0A0A0A0A:
        return _FIRST_ONLY
    if version == 0:
        return _NEGOTIATION
    return _NOT


def _long_header(buf: bytes | bytearray, p: int, end: int) -> tuple[int, int]:
    """(version kind, offset of the SCID length byte) of a long header at `p`; (0, -1) if none.

    The SCID length byte may lie past `end` (a snapped datagram)."""
    if end - p < 7 or not buf[p] & 0x80:
        return _NOT, -1
    version = (buf[p + 1] << 24) | (buf[p + 2] << 16) | (buf[p + 3] << 8) | buf[p + 4]
    kind = _version_kind(version)
    dcil = buf[p + 5]
    scil_at = p + 6 + dcil
    if kind == _NOT or dcil > MAX_CID or (scil_at < end and buf[scil_at] > MAX_CID):
        return _NOT, -1
    if kind == _NEGOTIATION:  # versions (4 bytes each) fill the rest of the datagram
        rest = end - (scil_at + 1 + buf[scil_at]) if scil_at < end else -1
        if rest < 4 or rest % 4:
            return _NOT, -1
    elif not buf[p] & 0x40:  # the fixed bit
        return _NOT, -1
    return kind, scil_at


def _varint(buf: bytes | bytearray, p: int, end: int) -> tuple[int, int]:
    """(value, next offset) of the variable-length integer at `p`; (-1, end) if cut short."""
    if p >= end:
        return -1, end
    size = 1 << (buf[p] >> 6)
    if p + size > end:
        return -1, end
    value = buf[p] & 0x3F
    for k in range(p + 1, p + size):
        value = (value << 8) | buf[k]
    return value, p + size


def quic_fields(buf: bytes | bytearray, start: int, end: int, short_dcid: int = -1) -> tuple[list[tuple[str, int, int]], bool]:
    """(fields, short header left) of the QUIC packets in `buf[start:end]` (one UDP payload).

    Fields are (name, offset, length): `quic.flags`, `quic.version`, `quic.dcil`, `quic.dcid`,
    `quic.scil`, `quic.scid`, `quic.token_length`, `quic.token`, `quic.length`, `quic.payload`
    (packet number and protected payload; a Retry's token and tag; the versions of a version
    negotiation). A short header's `quic.dcid` is named when `short_dcid` (its length) is
    known; otherwise the second value is True. Spans are cut at `end`.
    """
    fields: list[tuple[str, int, int]] = []

    def add(name: str, offset: int, length: int) -> None:
        fields.append((name, offset, max(0, min(length, end - offset))))

    p = start
    while p < end:
        first = buf[p]
        kind, scil_at = _long_header(buf, p, end)
        if kind == _NOT:
            if first & 0xC0 == 0x40 and (fields or p == start):  # short header: to the end of the datagram
                if short_dcid < 0:
                    return fields, True
                add("quic.flags", p, 1)
                add("quic.dcid", p + 1, short_dcid)
                add("quic.payload", p + 1 + short_dcid, end - p - 1 - short_dcid)
            break
        add("quic.flags", p, 1)
        add("quic.version", p + 1, 4)
        add("quic.dcil", p + 5, 1)
        add("quic.dcid", p + 6, buf[p + 5])
        if scil_at >= end:
            break
        scil = buf[scil_at]
        add("quic.scil", scil_at, 1)
        add("quic.scid", scil_at + 1, scil)
        q = scil_at + 1 + scil
        ptype = (first >> 4) & 3
        if (kind != _WALK_V1 and kind != _WALK_V2) or ptype == (3 if kind == _WALK_V1 else 0):  # no walk; Retry
            add("quic.payload", q, end - q)
            break
        if ptype == (0 if kind == _WALK_V1 else 1):  # Initial: token length and token
            size, after = _varint(buf, q, end)
            add("quic.token_length", q, after - q)
            if size < 0:
                break
            add("quic.token", after, size)
            q = after + size
        size, after = _varint(buf, q, end)
        add("quic.length", q, after - q)
        if size < 0:
            break
        add("quic.payload", after, size)
        p = after + size
    return fields, False


def scid_length(buf: bytes | bytearray, start: int, end: int) -> int:
    """The source connection ID length of a long header opening `buf[start:end]`, or -1."""
    kind, scil_at = _long_header(buf, start, end)
    return buf[scil_at] if kind != _NOT and scil_at < end else -1


MASKED_FIELDS = ("quic.dcid", "quic.scid", "quic.token")


def mask_quic(buf: bytearray, start: int, end: int, short_dcid: int = -1) -> bool:
    """Zero the connection IDs and Initial tokens of the QUIC packets in `buf[start:end]` in
    place; returns True when a short header was left because `short_dcid` is unknown."""
    fields, left = quic_fields(buf, start, end, short_dcid)
    for name, offset, length in fields:
        if name in MASKED_FIELDS:
            buf[offset : offset + length] = bytes(length)
    return left
