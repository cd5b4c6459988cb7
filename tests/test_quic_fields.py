"""QUIC headers field by field: `quic_fields` names every header field of the packets in a UDP
payload at the offset and length this file's own builder put it, for each version family and
packet type, coalesced packets, a short header after them, and the payloads it must leave alone;
`mask_quic` zeroes exactly the connection IDs, on both prep engines.

The expected fields come from the builder below (RFC 8999 / RFC 9000 / RFC 9369 layouts), not
from prep/tensors/quic.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from trafficlens.prep.engines import numba_available
from trafficlens.prep.tensors.quic import mask_quic, quic_fields, scid_length

V1, V2, DRAFT_29, MVFST, Q050, T051, GREASE = 1, 0x6B3343CF, 0xFF00001D, 0xFACEB002, 0x51303530, 0x54303531, 0x1A2A3A4A
DRAFT_22, DRAFT_34, T050 = 0xFF000016, 0xFF000022, 0x54303530  # the ends of the draft range, Google's T050
DCID, SCID = bytes(range(0xA1, 0xA9)), bytes(range(0xB1, 0xB6))  # 8 and 5 bytes, never 0


def varint(value: int, size: int) -> bytes:
    raw = value.to_bytes(size, "big")
    return bytes([raw[0] | {1: 0, 2: 1, 4: 2, 8: 3}[size] << 6]) + raw[1:]


def long_packet(first: int, version: int, payload: bytes, *, token: bytes | None = None, token_size: int = 1,
                length_size: int = 2, walk: bool = True, dcid: bytes = DCID, scid: bytes = SCID):
    """(bytes, fields) of one long-header packet; `walk`: the version's layout is known (token for
    an Initial, then a length); else the rest after the SCID is its payload."""
    out = bytes([first]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    fields = [("quic.flags", 0, 1), ("quic.version", 1, 4), ("quic.dcil", 5, 1), ("quic.dcid", 6, len(dcid)),
              ("quic.scil", 6 + len(dcid), 1), ("quic.scid", 7 + len(dcid), len(scid))]
    if not walk:
        return out + payload, fields + [("quic.payload", len(out), len(payload))]
    if token is not None:
        fields += [("quic.token_length", len(out), token_size), ("quic.token", len(out) + token_size, len(token))]
        out += varint(len(token), token_size) + token
    fields += [("quic.length", len(out), length_size), ("quic.payload", len(out) + length_size, len(payload))]
    return out + varint(len(payload), length_size) + payload, fields


def joined(*packets):
    """Packets coalesced in one datagram, their fields shifted to where each starts."""
    data, fields = b"", []
    for raw, own in packets:
        fields += [(name, offset + len(data), length) for name, offset, length in own]
        data += raw
    return data, fields


def body(n: int, seed: int) -> bytes:
    return bytes((seed * 37 + 11 * i) % 251 + 1 for i in range(n))


CASES = {
    # v1: Initial (type 0) with a token, Handshake (2), 0-RTT (1); 4- and 1-byte varints too
    "v1 initial": long_packet(0xC3, V1, body(40, 1), token=body(6, 2)),
    "v1 initial, empty token, 4-byte length": long_packet(0xC0, V1, body(30, 3), token=b"", length_size=4),
    "v1 initial, 2-byte token length": long_packet(0xC1, V1, body(20, 4), token=body(70, 5), token_size=2, length_size=1),
    "v1 handshake": long_packet(0xE1, V1, body(33, 6)),
    "v1 0-rtt": long_packet(0xD2, V1, body(25, 7), length_size=1),
    "v1 retry": long_packet(0xF0, V1, body(16 + 9, 8), walk=False),  # token and integrity tag: no length
    # v2 moves the types: Initial is 1, 0-RTT 2, Handshake 3, Retry 0
    "v2 initial": long_packet(0xD3, V2, body(40, 9), token=body(4, 10)),
    "v2 0-rtt": long_packet(0xE0, V2, body(21, 11)),
    "v2 retry": long_packet(0xC0, V2, body(24, 12), walk=False),
    "draft 29 initial": long_packet(0xC0, DRAFT_29, body(30, 13), token=b""),
    "draft 22 handshake": long_packet(0xE0, DRAFT_22, body(14, 31), length_size=1),
    "draft 34 handshake": long_packet(0xE0, DRAFT_34, body(15, 32), length_size=1),
    "T050": long_packet(0xC3, T050, body(30, 33), walk=False),
    "a packet of length 0, then another": joined(long_packet(0xE0, V1, b""), long_packet(0xE0, V1, body(12, 34))),
    "mvfst handshake": long_packet(0xE0, MVFST, body(12, 14), length_size=1),
    # Google QUIC and greased versions: the IDs, then the rest left whole
    "Q050": long_packet(0xC3, Q050, body(30, 15), walk=False),
    "T051": long_packet(0xE3, T051, body(30, 16), walk=False),
    "grease": long_packet(0xC3, GREASE, body(17, 17), walk=False),
    "version negotiation": long_packet(0x80, 0, (1).to_bytes(4, "big") + V2.to_bytes(4, "big") + body(4, 18), walk=False),
    "coalesced initial, handshake": joined(long_packet(0xC0, V1, body(30, 19), token=b""),
                                           long_packet(0xE0, V1, body(26, 20))),
    "zero-length IDs": long_packet(0xE0, V1, body(10, 21), dcid=b"", scid=b""),
    "20-byte IDs": long_packet(0xE0, V1, body(10, 22), dcid=body(20, 23), scid=body(20, 24)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_header_field_where_the_builder_put_it(name):
    data, want = CASES[name]
    prefix = body(9, 30)  # the UDP payload starts inside a bigger buffer
    got, left = quic_fields(prefix + data, len(prefix), len(prefix) + len(data))
    assert not left and got == [(f, o + len(prefix), n) for f, o, n in want]
    assert scid_length(data, 0, len(data)) == (20 if "20-byte" in name else 0 if "zero" in name else len(SCID))


def test_a_short_header_after_a_long_one_and_alone():
    long_raw, long_fields = CASES["v1 handshake"]
    short = bytes([0x43]) + bytes(range(0xC1, 0xC5)) + body(30, 25)  # a 4-byte DCID the peer chose
    data = long_raw + short
    fields, left = quic_fields(data, 0, len(data))
    assert left and fields == long_fields  # the short header's DCID length is unknown: left, and said so
    at = len(long_raw)
    fields, left = quic_fields(data, 0, len(data), short_dcid=4)
    assert not left and fields == long_fields + [("quic.flags", at, 1), ("quic.dcid", at + 1, 4),
                                                 ("quic.payload", at + 5, len(short) - 5)]
    alone, left = quic_fields(short, 0, len(short), short_dcid=4)
    assert not left and alone == [("quic.flags", 0, 1), ("quic.dcid", 1, 4), ("quic.payload", 5, len(short) - 5)]
    # a peer may choose a zero-length ID: known, so the short header is read, not left
    assert quic_fields(short, 0, len(short), short_dcid=0) == (
        [("quic.flags", 0, 1), ("quic.dcid", 1, 0), ("quic.payload", 1, len(short) - 1)], False)
    masked = bytearray(data)
    assert mask_quic(masked, 0, len(data), 4) is False
    zeroed = {i for i in range(len(data)) if masked[i] != data[i]}
    ids = {o + i for f, o, n in long_fields if f in ("quic.dcid", "quic.scid") for i in range(n)}
    assert zeroed == ids | set(range(at + 1, at + 5)) and not any(masked[i] for i in zeroed)


@pytest.mark.parametrize("raw", [
    long_packet(0xC0, 0x00000002, body(20, 26), token=b"")[0],  # an unknown version
    long_packet(0x80, V1, body(20, 27), token=b"")[0],  # v1 without the fixed bit
    long_packet(0xC0, V1, body(20, 28), token=b"", dcid=body(21, 29))[0],  # a DCID over 20 bytes
    long_packet(0xC0, V1, body(20, 28), token=b"", scid=body(21, 29))[0],  # an SCID over 20 bytes
    long_packet(0x80, 0, (1).to_bytes(4, "big") + b"\x01\x02", walk=False)[0],  # versions not in 4-byte words
    long_packet(0x80, 0, b"", walk=False)[0],  # a negotiation without versions
    bytes([0xC0]) + V1.to_bytes(4, "big"),  # under 7 bytes
], ids=["unknown version", "no fixed bit", "long dcid", "long scid", "ragged negotiation", "empty negotiation", "short"])
def test_what_is_not_quic_is_left_alone(raw):
    assert quic_fields(raw, 0, len(raw), short_dcid=4) == ([], False)
    masked = bytearray(raw)
    mask_quic(masked, 0, len(raw), 4)
    assert bytes(masked) == raw


def test_a_cut_datagram_gives_the_fields_up_to_the_cut():
    """Snapped captures: every cut of a coalesced Initial + Handshake names exactly the whole
    datagram's fields clipped at the cut, while the cut leaves the packet's header readable."""
    data, want = CASES["coalesced initial, handshake"]
    second = [o for f, o, _ in want if f == "quic.flags"][1]
    for n in range(7, len(data) + 1):
        if second <= n < second + 7:
            continue  # a second header under 7 bytes is not read as one
        got, _ = quic_fields(data, 0, n)
        clipped = [(f, o, min(length, n - o)) for f, o, length in want if o < n or (o == n and length == 0)]
        assert [g for g in got if g[2]] == [c for c in clipped if c[2]], n


@pytest.mark.skipif(not numba_available(), reason="numba is not installed (the optional fast backend)")
@pytest.mark.parametrize("name", list(CASES))
def test_the_compiled_mask_zeroes_the_same_bytes(name):
    from trafficlens.prep.engines import kernels as kn

    data, _ = CASES[name]
    expected = bytearray(data)
    left = mask_quic(expected, 0, len(data), 4)
    src = np.frombuffer(data, np.uint8)
    dst = src.copy()
    assert kn._mask_quic(src, 0, 0, len(data), dst, 4, True) == left
    assert bytes(dst) == bytes(expected)
