"""Find the server name (SNI) in a TLS ClientHello, to mask it in place.

The SNI names the service in clear text and would let a model read the answer instead of
learning traffic shape; `strict` masking zeroes it. Parsing is bounds-checked at every step
because the bytes may be snapped, fragmented or not TLS at all.
"""

from __future__ import annotations


def sni_spans(buf: bytes | bytearray, start: int = 0) -> list[tuple[int, int]]:
    """(offset, length) of each host name in a ClientHello starting at `start`; [] if none."""
    n = len(buf)
    p = start
    # TLS record header: content type 22 (handshake), version 3.x, length.
    if n - p < 9 or buf[p] != 0x16 or buf[p + 1] != 0x03 or buf[p + 5] != 0x01:
        return []
    p += 9  # record header (5) + handshake type (1) + handshake length (3)
    p += 2 + 32  # client_version + random
    if p >= n:
        return []
    p += 1 + buf[p]  # session id
    if p + 2 > n:
        return []
    p += 2 + int.from_bytes(buf[p : p + 2], "big")  # cipher suites
    if p >= n:
        return []
    p += 1 + buf[p]  # compression methods
    if p + 2 > n:
        return []
    ext_end = min(n, p + 2 + int.from_bytes(buf[p : p + 2], "big"))
    p += 2
    spans = []
    while p + 4 <= ext_end:
        ext_type = int.from_bytes(buf[p : p + 2], "big")
        ext_len = int.from_bytes(buf[p + 2 : p + 4], "big")
        body = p + 4
        if ext_type == 0:  # server_name: list length (2), then entries type (1) + length (2) + name
            q = body + 2
            end = min(ext_end, body + ext_len)
            while q + 3 <= end:
                name_len = int.from_bytes(buf[q + 1 : q + 3], "big")
                spans.append((q + 3, max(0, min(name_len, n - (q + 3)))))
                q += 3 + name_len
        p = body + ext_len
    return spans


def mask_sni(buf: bytearray, start: int = 0) -> int:
    """Zero every SNI host name in place; returns the number of bytes zeroed."""
    zeroed = 0
    for offset, length in sni_spans(buf, start):
        buf[offset : offset + length] = bytes(length)
        zeroed += length
    return zeroed
