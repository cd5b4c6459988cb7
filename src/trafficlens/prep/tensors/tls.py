"""Find the values in a TLS ClientHello, ServerHello or NewSessionTicket that `strict` masking zeroes.

The server name (SNI) names the service in clear text and would let a model read the answer
instead of learning traffic shape. The hellos' `random`, the bytes of their `session_id` and
the key_share key exchange values (ephemeral public keys) are fresh random values per
connection: they name nothing, but they make otherwise identical sessions look different, so
twins on both sides of a train/test split escape de-duplication. Session tickets (mask version
3) are worse: a server issues one in a NewSessionTicket (in clear before TLS 1.3) and the client
presents the same bytes in the session_ticket extension or, under TLS 1.3, as a pre_shared_key
identity of later hellos, so they tie sessions of one client together; the PSK's obfuscated
ticket age and binders are per-connection values like `random`. Parsing is bounds-checked at
every step because the bytes may be snapped, fragmented or not TLS at all.

A hello can be longer than one TCP segment (post-quantum key shares make ClientHellos of
1.5-2 KB), so it is also masked on the session's reassembled byte stream (`mask_hello_stream`).
Only a hello in the first record of a stream is followed across segments.
"""

from __future__ import annotations

HANDSHAKE = 0x16
RECORD_HEADER = 5
NEW_SESSION_TICKET = 4


def _be16(buf: bytes | bytearray, i: int) -> int:
    return (buf[i] << 8) | buf[i + 1]


def hello_spans(buf: bytes | bytearray, start: int = 0) -> list[tuple[str, int, int]]:
    """(field, offset, length) of each value to zero in a handshake record starting at `start`.

    Fields: `tls.handshake.random`, `tls.handshake.session_id`, `tls.handshake.sni` (ClientHello),
    `tls.handshake.key_exchange`, and in a ClientHello `tls.handshake.session_ticket` and the
    pre_shared_key's `tls.handshake.psk_identity`, `tls.handshake.psk_ticket_age` and
    `tls.handshake.psk_binder`; a NewSessionTicket's `tls.handshake.session_ticket`. [] when
    `buf[start:]` is no such record. Parsing stays inside the record, its first handshake message
    and `buf`; a value cut by the end of `buf` gives a shorter span.
    """
    n = len(buf)
    p = start
    # record header: content type 22 (handshake), version 3.x, length; then handshake type, length
    if n - p < 9 or buf[p] != HANDSHAKE or buf[p + 1] != 0x03:
        return []
    kind = buf[p + 5]
    if kind != 1 and kind != 2 and kind != NEW_SESSION_TICKET:
        return []
    end = min(n, p + RECORD_HEADER + _be16(buf, p + 3), p + 9 + ((buf[p + 6] << 16) | _be16(buf, p + 7)))
    if kind == NEW_SESSION_TICKET:  # lifetime hint (4), ticket length (2), ticket (TLS 1.2; 1.3's is encrypted)
        p += 9 + 4
        if p + 2 > end:
            return []
        return [("tls.handshake.session_ticket", p + 2, max(0, min(_be16(buf, p), end - p - 2)))]
    p += 9 + 2  # + legacy version
    spans = [("tls.handshake.random", p, max(0, min(32, end - p)))]
    p += 32
    if p >= end:
        return spans
    spans.append(("tls.handshake.session_id", p + 1, max(0, min(buf[p], end - p - 1))))
    p += 1 + buf[p]
    if kind == 1:
        if p + 2 > end:
            return spans
        p += 2 + _be16(buf, p)  # cipher suites
        if p >= end:
            return spans
        p += 1 + buf[p]  # compression methods
    else:
        p += 3  # cipher suite, compression method
    if p + 2 > end:
        return spans
    ext_end = min(end, p + 2 + _be16(buf, p))
    p += 2
    while p + 4 <= ext_end:
        ext_type = _be16(buf, p)
        body = p + 4
        body_end = min(ext_end, body + _be16(buf, p + 2))
        if ext_type == 0 and kind == 1:  # server_name: list length (2), then type (1) + length (2) + name
            q = body + 2
            while q + 3 <= body_end:
                size = _be16(buf, q + 1)
                spans.append(("tls.handshake.sni", q + 3, max(0, min(size, body_end - q - 3))))
                q += 3 + size
        elif ext_type == 51:  # key_share: ClientHello a list (length 2) of group (2) + length (2) + key
            q = body + 2 if kind == 1 else body  # a ServerHello one entry (a HelloRetryRequest the group only)
            while q + 4 <= body_end:
                size = _be16(buf, q + 2)
                spans.append(("tls.handshake.key_exchange", q + 4, max(0, min(size, body_end - q - 4))))
                q += 4 + size
                if kind == 2:
                    break
        elif ext_type == 35 and kind == 1 and body_end > body:  # session_ticket: the ticket (empty: asking for one)
            spans.append(("tls.handshake.session_ticket", body, body_end - body))
        elif ext_type == 41 and kind == 1:  # pre_shared_key (a server's is the chosen index only)
            spans += _psk_spans(buf, body, body_end)
        p = body + _be16(buf, p + 2)
    return spans


def _psk_spans(buf: bytes | bytearray, body: int, body_end: int) -> list[tuple[str, int, int]]:
    """A ClientHello's pre_shared_key: identities (length 2) of identity (length 2 + bytes) and
    obfuscated ticket age (4), then binders (length 2) of binder (length 1 + bytes)."""
    spans = []
    if body + 2 > body_end:
        return spans
    ids_end = min(body_end, body + 2 + _be16(buf, body))
    q = body + 2
    while q + 2 <= ids_end:
        size = _be16(buf, q)
        spans.append(("tls.handshake.psk_identity", q + 2, max(0, min(size, ids_end - q - 2))))
        q += 2 + size
        if q >= ids_end:
            break
        spans.append(("tls.handshake.psk_ticket_age", q, min(4, ids_end - q)))
        q += 4
    q = body + 2 + _be16(buf, body)
    if q + 2 > body_end:
        return spans
    binders_end = min(body_end, q + 2 + _be16(buf, q))
    q += 2
    while q + 1 <= binders_end:
        size = buf[q]
        spans.append(("tls.handshake.psk_binder", q + 1, max(0, min(size, binders_end - q - 1))))
        q += 1 + size
    return spans


def mask_hello(buf: bytearray, start: int = 0) -> int:
    """Zero every value `hello_spans` finds, in place; returns the number of bytes zeroed."""
    zeroed = 0
    for _, offset, length in hello_spans(buf, start):
        buf[offset : offset + length] = bytes(length)
        zeroed += length
    return zeroed


def record_end(buf: bytes | bytearray, start: int, end: int) -> int:
    """Where the first record of a stream opening at `buf[start:end]` ends (stream offset), when
    it is a handshake record; 0 otherwise. Segments before that offset are stored whole."""
    if end - start < RECORD_HEADER or buf[start] != HANDSHAKE or buf[start + 1] != 0x03:
        return 0
    return RECORD_HEADER + _be16(buf, start + 3)


def hello_stream(segments: list[tuple[int, bytes, int]]) -> tuple[bytearray, list[tuple[int, int]]]:
    """The stream of a handshake record that opens the direction and is longer than its first
    segment, and its pieces (segment index, where its payload starts in the stream): the
    segments from the first while they are contiguous and whole, up to the record's end.
    Empty when there is no such record. `segments` as for `mask_hello_stream`."""
    if len(segments) < 2:
        return bytearray(), []
    rel, view, offset = segments[0]
    need = record_end(view, offset, len(view))
    if need <= len(view) - offset:
        return bytearray(), []
    stream = bytearray()
    pieces = []
    expect = rel
    for i, (rel, view, offset) in enumerate(segments):
        if rel != expect or len(stream) >= need:
            break
        pieces.append((i, len(stream)))
        stream += view[offset:]
        expect = rel + len(view) - offset
    return stream, pieces


def mask_hello_stream(segments: list[tuple[int, bytes, int]]) -> dict[int, bytes]:
    """Mask a hello cut across TCP segments, on the reassembled stream of one direction.

    `segments`: (relative sequence number, view, offset of the payload in the view) of the
    direction's payload packets, in sequence order. Returns {index: masked view} for the
    pieces of `hello_stream` ({} when there are none: `mask_hello` on the first segment did it).
    """
    stream, pieces = hello_stream(segments)
    masked = bytearray(stream)
    if len(pieces) < 2 or not mask_hello(masked):
        return {}
    out = {}
    for i, at in pieces:
        _, view, offset = segments[i]
        out[i] = view[:offset] + bytes(masked[at : at + len(view) - offset])
    return out
