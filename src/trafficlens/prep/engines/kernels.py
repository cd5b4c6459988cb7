"""numba kernels of the compiled prep backend: a line-for-line port of the Python reference.

Every function here mirrors one in capture/reader.py, capture/decode.py, flows/assembler.py,
flows/session.py, features/views.py, features/tls.py, features/quic.py or features/tensors.py;
keep them in step (the equivalence test fails otherwise). State lives in plain arrays so the kernels can be
cached on disk (`cache=True`): no jitclass, no compile at every start.

Session state: one row per slot of `slot_ints` (int64 columns C_*) and `slot_floats` (float64 columns F_*).
Kept packets and stored views are nodes of two pools chained per session (PK_*, ST_*), with
free lists, so memory is bounded by live sessions. View bytes go to an arena, compacted when
full. A kernel that runs out of room returns a NEED_* code with the packet it stopped at; the
driver grows the arrays and calls it again from there.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit
from numba.typed import List

# decode skip reasons (index into REASONS)
REASONS = ("", "non_ip", "other_protocol", "ip_fragment", "malformed", "truncated", "unsupported_link")
_NON_IP, _OTHER, _FRAG, _MALFORMED, _TRUNC, _UNSUP = 1, 2, 3, 4, 5, 6

# decoded packet columns
D_CODE, D_L3, D_L4, D_L7, D_END, D_VER, D_PROTO = 0, 1, 2, 3, 4, 5, 6
D_S0, D_D0 = 7, 11  # 4 words each: the address as big-endian 32-bit words (IPv4: last word)
D_SPORT, D_DPORT, D_FLAGS, D_SEQ, D_ACK, D_PLEN, D_IPLEN, D_FRAGM = 15, 16, 17, 18, 19, 20, 21, 22
ND = 23

# session slot columns
C_SERIAL, C_STATE, C_CLOSING, C_PROTO, C_VER = 0, 1, 2, 3, 4
C_CL0, C_CLPORT, C_SV0, C_SVPORT = 5, 9, 10, 14
C_BASE0, C_HASB0 = 15, 17  # per direction: 15, 16 and 17, 18
C_OOO, C_RETR, C_PACKS, C_PAY, C_NPK, C_BYTES, C_FWD = 19, 20, 21, 22, 23, 24, 25
C_STB, C_STNE, C_NST, C_PHEAD, C_PTAIL, C_SHEAD, C_STAIL = 26, 27, 28, 29, 30, 31, 32
C_KEY = 33  # 12 columns
C_TNST, C_TPAY = 45, 46  # stored views and payload bytes when the live trigger (M-th kept packet) fired
# strict mask, per direction (Session.hello_end, .quic, .cids), each + 1 so that 0 is "not yet"
C_HELLO0, C_QUIC, C_CID0 = 47, 49, 50  # C_HELLO0 and C_CID0: 2 columns each
C_BYTESF = 52  # IP bytes of the kept packets from the client (C_BYTES: both directions)
NI = 53
F_START, F_LAST, F_TMIN, F_TMAX = 0, 1, 2, 3
NF = 4
# packet pool columns; stored-view pool columns
P_SIZE, P_DIRFLAGS, P_NEXT = 0, 1, 2
E_DIR, E_REL, E_HASREL, E_OFF, E_LEN, E_NEXT, E_L7 = 0, 1, 2, 3, 4, 5, 6  # E_L7: payload offset in the view
NE = 7
# counters
K_SERIAL, K_SINCE, K_RETR, K_PACK, K_STARTED, K_PFREE, K_EFREE, K_NSFREE, K_NEMIT, K_ARENA, K_FRAGKEPT, K_HTUSED = range(12)
K_NTRIG = 12
K_QUICLEFT = 13  # SessionAssembler.quic_short_unmasked
K_ROOM = 14  # arena bytes the packet that returned NEED_ARENA needs
NK = 15
HT_EMPTY, HT_DELETED = -1, -2  # entries of the session table besides slot numbers
# return codes of `assemble`
DONE, NEED_SLOT, NEED_PACKET, NEED_STORED, NEED_ARENA = 0, 1, 2, 3, 4



class State(NamedTuple):
    """Every array of a compiled engine's sessions (the engine grows them; kernels fill them)."""

    slot_index: np.ndarray  # open-addressing table: session key -> slot (HT_EMPTY, HT_DELETED)
    slot_ints: np.ndarray  # (slots, NI) int64: the C_* columns of each session
    slot_floats: np.ndarray  # (slots, NF) float64: the F_* columns (times)
    free_slots: np.ndarray  # stack of free slot numbers (counters[K_NSFREE] of them)
    packet_pool: np.ndarray  # (nodes, 3): kept packets (P_* columns), chained per session
    packet_times: np.ndarray  # their times
    view_pool: np.ndarray  # (nodes, NE): stored views (E_* columns), chained per session
    view_times: np.ndarray  # their times
    arena: np.ndarray  # uint8: the stored views' bytes
    seq_ranges: Any  # typed List per slot and direction: the TCP payload ranges seen
    seq_range_counts: np.ndarray  # ranges in use in each
    ended_slots: np.ndarray  # sessions finished since the last harvest (counters[K_NEMIT])
    triggered_slots: np.ndarray  # live: sessions whose `after`-th packet came (counters[K_NTRIG])
    counters: np.ndarray  # the K_* counters
    scratch: np.ndarray  # uint8 work space for one packet's view


class Settings(NamedTuple):
    """What a compiled engine's PrepConfig means to the kernels."""

    bidir: bool  # unit "session" (both directions) rather than "flow"
    timeout: float  # idle timeout, seconds
    store_packets: int  # views kept per session: at least this many non-empty ones ...
    store_bytes: int  # ... or this many bytes (the image)
    view_limit: int  # bytes of a view stored (more for a TLS hello under the strict mask)
    layer: int  # index into LAYERS
    mask: int  # index into MASKS (2: strict)
    after: int  # live: decide a session at its after-th kept packet (0: prep)


FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
MAX_STORED = 256  # flows.assembler._MAX_STORED
IDLE_SCAN_EVERY = 1 << 16  # flows.assembler._IDLE_SCAN_EVERY
_MOD = 1 << 32
_HALF = 1 << 31


# -- reader ------------------------------------------------------------------------------------
@njit(cache=True)
def _u32(b, i, big):
    if big:
        return (np.int64(b[i]) << 24) | (np.int64(b[i + 1]) << 16) | (np.int64(b[i + 2]) << 8) | np.int64(b[i + 3])
    return (np.int64(b[i + 3]) << 24) | (np.int64(b[i + 2]) << 16) | (np.int64(b[i + 1]) << 8) | np.int64(b[i])


@njit(cache=True, nogil=True)
def scan_pcap(data, pos, big, scale, limit, header, offs, caps, origs, times):
    """Records wholly in `data` from `pos` (reader._read_pcap's inner loop); (count, stop position).
    `header`: record header bytes (16; 24 in the "modified" format, whose extra fields are skipped)."""
    end = data.size
    n = 0
    while pos + header <= end:
        sec = _u32(data, pos, big)
        frac = _u32(data, pos + 4, big)
        caplen = _u32(data, pos + 8, big)
        orig = _u32(data, pos + 12, big)
        start = pos + header
        stop = start + caplen
        if caplen > limit or (caplen > orig and orig != 0) or stop > end:
            break
        times[n] = np.float64(sec) + np.float64(frac) * scale
        offs[n] = start
        caps[n] = caplen
        origs[n] = orig
        n += 1
        pos = stop
    return n, pos


# -- decode ------------------------------------------------------------------------------------
@njit(cache=True)
def _be16(b, i):
    return (np.int64(b[i]) << 8) | np.int64(b[i + 1])


@njit(cache=True)
def _ethertype(kind, off):
    if kind == 0x0800:
        return off, 4
    if kind == 0x86DD:
        return off, 6
    return -_NON_IP, 0


@njit(cache=True)
def _ppp_protocol(proto, off):
    if proto == 0x0021:
        return off, 4
    if proto == 0x0057:
        return off, 6
    return -_NON_IP, 0


@njit(cache=True)
def _link(d, f, n, linktype):
    """(offset of the IP header, version or 0) or (-reason, 0); decode._link."""
    if linktype == 1:
        if n < 14:
            return -_TRUNC, 0
        kind = _be16(d, f + 12)
        off = 14
        depth = 0
        while kind == 0x8100 or kind == 0x88A8 or kind == 0x9100:
            if depth == 4:
                return -_MALFORMED, 0
            if n < off + 4:
                return -_TRUNC, 0
            kind = _be16(d, f + off + 2)
            off += 4
            depth += 1
        if kind == 0x8864:
            if n < off + 8:
                return -_TRUNC, 0
            return _ppp_protocol(_be16(d, f + off + 6), off + 8)
        return _ethertype(kind, off)
    if linktype == 12 or linktype == 14 or linktype == 101 or linktype == 228 or linktype == 229:
        return 0, (4 if linktype == 228 else (6 if linktype == 229 else 0))
    if linktype == 113:
        if n < 16:
            return -_TRUNC, 0
        return _ethertype(_be16(d, f + 14), 16)
    if linktype == 276:
        if n < 20:
            return -_TRUNC, 0
        return _ethertype(_be16(d, f), 20)
    if linktype == 0 or linktype == 108:
        if n < 4:
            return -_TRUNC, 0
        family = _u32(d, f, False)
        if family > 0xFFFF:
            family = _u32(d, f, True)
        if family == 2:
            return 4, 4
        if family == 10 or family == 23 or family == 24 or family == 28 or family == 30:
            return 4, 6
        return -_NON_IP, 0
    if linktype == 9 or linktype == 50:
        if n < 4:
            return -_TRUNC, 0
        if (d[f] == 0x0F or d[f] == 0x8F) and d[f + 1] == 0:
            return _ethertype(_be16(d, f + 2), 4)
        off = 2 if (d[f] == 0xFF and d[f + 1] == 0x03) else 0
        if d[f + off] & 1:
            return _ppp_protocol(np.int64(d[f + off]), off + 1)
        return _ppp_protocol(_be16(d, f + off), off + 2)
    if linktype == 104:
        if n < 4:
            return -_TRUNC, 0
        return _ethertype(_be16(d, f + 2), 4)
    return -_UNSUP, 0


@njit(cache=True)
def _decode_one(d, f, n, orig, linktype, out):
    """decode.decode for the frame d[f:f+n]; fills `out` (D_* columns), returns the skip code."""
    off, version = _link(d, f, n, linktype)
    if off < 0:
        return -off
    if n <= off:
        return _TRUNC
    if version == 0:
        version = np.int64(d[f + off]) >> 4
    wire = (orig if orig > n else n) - off
    if version == 4:
        code, l4, total, proto, fragmented = _ipv4(d, f, n, off, wire, out)
    elif version == 6:
        code, l4, total, proto, fragmented = _ipv6(d, f, n, off, wire, out)
    else:
        return _MALFORMED
    if code:
        return code
    ip_end = off + total
    code, l7, sport, dport, flags, seq, ack, payload_len = _transport(d, f, n, l4, ip_end, proto, fragmented)
    if code:
        return code
    out[D_L3] = off
    out[D_L4] = l4
    out[D_L7] = l7
    out[D_END] = ip_end if ip_end < n else n
    out[D_VER] = version
    out[D_PROTO] = proto
    out[D_SPORT] = sport
    out[D_DPORT] = dport
    out[D_FLAGS] = flags
    out[D_SEQ] = seq
    out[D_ACK] = ack
    out[D_PLEN] = payload_len
    out[D_IPLEN] = total
    out[D_FRAGM] = fragmented
    return 0


@njit(cache=True)
def _ipv4(d, f, n, off, wire, out):
    """decode._ipv4: (skip code, l4, total, proto, first fragment); the addresses go to `out`."""
    if n < off + 20:
        return _TRUNC, 0, 0, 0, 0
    vihl = np.int64(d[f + off])
    total = _be16(d, f + off + 2)
    frag = _be16(d, f + off + 6)
    proto = np.int64(d[f + off + 9])
    ihl = (vihl & 0x0F) << 2
    if vihl >> 4 != 4 or ihl < 20:
        return _MALFORMED, 0, 0, 0, 0
    if total == 0:
        total = wire
    if total < ihl or total > wire:
        return _MALFORMED, 0, 0, 0, 0
    if frag & 0x1FFF:
        return _FRAG, 0, 0, 0, 0
    for w in range(3):
        out[D_S0 + w] = 0
        out[D_D0 + w] = 0
    out[D_S0 + 3] = _u32(d, f + off + 12, True)
    out[D_D0 + 3] = _u32(d, f + off + 16, True)
    return 0, off + ihl, total, proto, (1 if frag & 0x2000 else 0)


@njit(cache=True)
def _ipv6(d, f, n, off, wire, out):
    """decode._ipv6: `_ipv4` for IPv6, through its extension headers."""
    if n < off + 40:
        return _TRUNC, 0, 0, 0, 0
    plen = _be16(d, f + off + 4)
    proto = np.int64(d[f + off + 6])
    if d[f + off] >> 4 != 6:
        return _MALFORMED, 0, 0, 0, 0
    total = 40 + plen
    if plen == 0 and wire > 40:
        total = wire
    if total > wire:
        return _MALFORMED, 0, 0, 0, 0
    l4 = off + 40
    fragmented = 0
    for _ in range(8):
        if proto == 0 or proto == 43 or proto == 60:
            if n < l4 + 2:
                return _TRUNC, 0, 0, 0, 0
            proto, l4 = np.int64(d[f + l4]), l4 + ((np.int64(d[f + l4 + 1]) + 1) << 3)
        elif proto == 44:
            if n < l4 + 8:
                return _TRUNC, 0, 0, 0, 0
            if _be16(d, f + l4 + 2) & 0xFFF8:
                return _FRAG, 0, 0, 0, 0
            fragmented = 1 if d[f + l4 + 3] & 1 == 1 else 0
            proto, l4 = np.int64(d[f + l4]), l4 + 8
        elif proto == 51:
            if n < l4 + 2:
                return _TRUNC, 0, 0, 0, 0
            proto, l4 = np.int64(d[f + l4]), l4 + ((np.int64(d[f + l4 + 1]) + 2) << 2)
        else:
            break
    if l4 > off + total:
        return _MALFORMED, 0, 0, 0, 0
    for w in range(4):
        out[D_S0 + w] = _u32(d, f + off + 8 + 4 * w, True)
        out[D_D0 + w] = _u32(d, f + off + 24 + 4 * w, True)
    return 0, l4, total, proto, fragmented


@njit(cache=True)
def _transport(d, f, n, l4, ip_end, proto, fragmented):
    """decode._transport: (skip code, l7, sport, dport, flags, seq, ack, payload length)."""
    if proto == 6:
        if ip_end < l4 + 20:
            return _MALFORMED, 0, 0, 0, 0, 0, 0, 0
        if n < l4 + 20:
            return _TRUNC, 0, 0, 0, 0, 0, 0, 0
        l7 = l4 + ((np.int64(d[f + l4 + 12]) >> 4) << 2)
        if l7 < l4 + 20 or l7 > ip_end:
            return _MALFORMED, 0, 0, 0, 0, 0, 0, 0
        if l7 > n:
            return _TRUNC, 0, 0, 0, 0, 0, 0, 0
        return (0, l7, _be16(d, f + l4), _be16(d, f + l4 + 2), np.int64(d[f + l4 + 13]), _u32(d, f + l4 + 4, True),
                _u32(d, f + l4 + 8, True), ip_end - l7)
    if proto == 17:
        if ip_end < l4 + 8:
            return _MALFORMED, 0, 0, 0, 0, 0, 0, 0
        if n < l4 + 8:
            return _TRUNC, 0, 0, 0, 0, 0, 0, 0
        length = _be16(d, f + l4 + 4)
        l7 = l4 + 8
        payload_len = ip_end - l7
        if length:
            if length < 8 or (length - 8 > payload_len and not fragmented):
                return _MALFORMED, 0, 0, 0, 0, 0, 0, 0
            payload_len = length - 8
        return 0, l7, _be16(d, f + l4), _be16(d, f + l4 + 2), 0, 0, 0, payload_len
    return _OTHER, 0, 0, 0, 0, 0, 0, 0


@njit(cache=True, nogil=True)
def decode_block(data, offs, caps, origs, linktypes, n, out):
    """Decode packets 0..n-1 into `out` (n, ND); column D_CODE is 0 or the skip reason."""
    for i in range(n):
        out[i, D_CODE] = _decode_one(data, offs[i], caps[i], origs[i], linktypes[i], out[i])


# -- views and masking -------------------------------------------------------------------------
@njit(cache=True)
def _zero(dst, at, length):
    for k in range(at, at + length):
        dst[k] = 0


@njit(cache=True)
def _mask_hello(src, base, start, n, dst):
    """tls.mask_hello over src[base:base+n] from `start`, zeroing in dst (same offsets).

    Spans are found on the unmasked source, as the reference collects them all before zeroing."""
    p = start
    if n - p < 9 or src[base + p] != 0x16 or src[base + p + 1] != 0x03:
        return
    kind = src[base + p + 5]
    if kind != 1 and kind != 2 and kind != 4:
        return
    end = min(n, p + 5 + _be16(src, base + p + 3), p + 9 + ((np.int64(src[base + p + 6]) << 16) | _be16(src, base + p + 7)))
    if kind == 4:  # NewSessionTicket: lifetime hint (4), ticket length (2), ticket
        p += 13
        if p + 2 <= end:
            _zero(dst, p + 2, max(0, min(_be16(src, base + p), end - p - 2)))
        return
    p += 11
    _zero(dst, p, max(0, min(32, end - p)))  # random
    p += 32
    if p >= end:
        return
    size = np.int64(src[base + p])
    _zero(dst, p + 1, max(0, min(size, end - p - 1)))  # session id
    p += 1 + size
    if kind == 1:
        if p + 2 > end:
            return
        p += 2 + _be16(src, base + p)
        if p >= end:
            return
        p += 1 + np.int64(src[base + p])
    else:
        p += 3
    if p + 2 > end:
        return
    ext_end = min(end, p + 2 + _be16(src, base + p))
    p += 2
    while p + 4 <= ext_end:
        ext_type = _be16(src, base + p)
        ext_len = _be16(src, base + p + 2)
        body = p + 4
        body_end = min(ext_end, body + ext_len)
        if ext_type == 0 and kind == 1:
            q = body + 2
            while q + 3 <= body_end:
                size = _be16(src, base + q + 1)
                _zero(dst, q + 3, max(0, min(size, body_end - q - 3)))
                q += 3 + size
        elif ext_type == 51:
            q = body + 2 if kind == 1 else body
            while q + 4 <= body_end:
                size = _be16(src, base + q + 2)
                _zero(dst, q + 4, max(0, min(size, body_end - q - 4)))
                q += 4 + size
                if kind == 2:
                    break
        elif ext_type == 35 and kind == 1:
            _zero(dst, body, body_end - body)  # session ticket
        elif ext_type == 41 and kind == 1:
            _mask_psk(src, base, body, body_end, dst)
        p = body + ext_len


@njit(cache=True)
def _mask_psk(src, base, body, body_end, dst):
    """tls._psk_spans, zeroing: identities and their ticket ages, then binders."""
    if body + 2 > body_end:
        return
    declared = _be16(src, base + body)
    ids_end = min(body_end, body + 2 + declared)
    q = body + 2
    while q + 2 <= ids_end:
        size = _be16(src, base + q)
        _zero(dst, q + 2, max(0, min(size, ids_end - q - 2)))
        q += 2 + size
        if q >= ids_end:
            break
        _zero(dst, q, min(4, ids_end - q))
        q += 4
    q = body + 2 + declared
    if q + 2 > body_end:
        return
    binders_end = min(body_end, q + 2 + _be16(src, base + q))
    q += 2
    while q + 1 <= binders_end:
        size = np.int64(src[base + q])
        _zero(dst, q + 1, max(0, min(size, binders_end - q - 1)))
        q += 1 + size


@njit(cache=True)
def _record_end(src, base, n):
    """tls.record_end of src[base:base+n]."""
    if n < 5 or src[base] != 0x16 or src[base + 1] != 0x03:
        return 0
    return 5 + _be16(src, base + 3)


@njit(cache=True)
def _mask_hello_stream(arena, segs, rel, off, ln, po):
    """tls.mask_hello_stream over stored views (entries `segs`, in sequence order), in the arena."""
    e = segs[0]
    head = ln[e] - po[e]
    need = _record_end(arena, off[e] + po[e], head)
    if need == 0 or need <= head:
        return
    total = 0
    count = 0
    expect = rel[e]
    for j in range(segs.size):
        e = segs[j]
        if rel[e] != expect or total >= need:
            break
        part = max(0, ln[e] - po[e])
        total += part
        expect = rel[e] + part
        count += 1
    if count < 2:
        return
    stream = np.empty(total, np.uint8)
    w = 0
    for j in range(count):
        e = segs[j]
        part = max(0, ln[e] - po[e])
        stream[w : w + part] = arena[off[e] + po[e] : off[e] + po[e] + part]
        w += part
    masked = stream.copy()
    _mask_hello(stream, 0, 0, total, masked)
    w = 0
    for j in range(count):
        e = segs[j]
        part = max(0, ln[e] - po[e])
        arena[off[e] + po[e] : off[e] + po[e] + part] = masked[w : w + part]
        w += part


@njit(cache=True)
def _quic_kind(version):
    """quic._version_kind: 0 not QUIC, 1 v1 layout, 2 v2 layout, 3 first packet only, 4 negotiation."""
    if version == 1 or (version >= 0xFF000016 and version <= 0xFF000022) or version >> 8 == 0xFACEB0:
        return 1
    if version == 0x6B3343CF:
        return 2
    if version == 0x51303530 or version == 0x54303530 or version == 0x54303531 or version & 0x0F0F0F0F == 0x0A0A0A0A:
        return 3
    if version == 0:
        return 4
    return 0


@njit(cache=True)
def _quic_long(src, base, p, end):
    """quic._long_header: (version kind, offset of the SCID length byte) or (0, -1)."""
    if end - p < 7 or src[base + p] & 0x80 == 0:
        return 0, -1
    kind = _quic_kind(_u32(src, base + p + 1, True))
    dcil = np.int64(src[base + p + 5])
    scil_at = p + 6 + dcil
    if kind == 0 or dcil > 20 or (scil_at < end and src[base + scil_at] > 20):
        return 0, -1
    if kind == 4:
        rest = end - (scil_at + 1 + np.int64(src[base + scil_at])) if scil_at < end else -1
        if rest < 4 or rest % 4 != 0:
            return 0, -1
    elif src[base + p] & 0x40 == 0:
        return 0, -1
    return kind, scil_at


@njit(cache=True)
def _varint(src, base, p, end):
    """quic._varint: (value, next offset) or (-1, end)."""
    if p >= end:
        return -1, end
    size = np.int64(1) << (np.int64(src[base + p]) >> 6)
    if p + size > end:
        return -1, end
    value = np.int64(src[base + p]) & 0x3F
    for k in range(p + 1, p + size):
        value = (value << 8) | np.int64(src[base + k])
    return value, p + size


@njit(cache=True)
def _quic_scid(src, base, start, end):
    """quic.scid_length of src[base+start : base+end]."""
    kind, scil_at = _quic_long(src, base, start, end)
    if kind != 0 and scil_at < end:
        return np.int64(src[base + scil_at])
    return -1


@njit(cache=True)
def _mask_quic(src, base, start, end, dst, short_dcid, write):
    """quic.mask_quic over src[base+start : base+end], zeroing in dst (same offsets) when `write`;
    returns whether a short header was left (its connection ID length unknown)."""
    p = start
    seen = False
    while p < end:
        first = np.int64(src[base + p])
        kind, scil_at = _quic_long(src, base, p, end)
        if kind == 0:
            if first & 0xC0 == 0x40 and (seen or p == start):
                if short_dcid < 0:
                    return True
                if write:
                    _zero(dst, p + 1, max(0, min(short_dcid, end - p - 1)))
            break
        seen = True
        if write:
            _zero(dst, p + 6, max(0, min(np.int64(src[base + p + 5]), end - p - 6)))
        if scil_at >= end:
            break
        scil = np.int64(src[base + scil_at])
        if write:
            _zero(dst, scil_at + 1, max(0, min(scil, end - scil_at - 1)))
        q = scil_at + 1 + scil
        ptype = (first >> 4) & 3
        if (kind != 1 and kind != 2) or ptype == (3 if kind == 1 else 0):
            break
        if ptype == (0 if kind == 1 else 1):  # Initial: the token (a client's address validation)
            size, after = _varint(src, base, q, end)
            if size < 0:
                break
            if write:
                _zero(dst, after, max(0, min(size, end - after)))
            q = after + size
        size, after = _varint(src, base, q, end)
        if size < 0:
            break
        p = after + size
    return False


@njit(cache=True)
def _mask_payload(src, base, l7, n, dst, proto, quic_dcid):
    """views._mask_payload."""
    if src[base + l7] == 0x16:
        _mask_hello(src, base, l7, n, dst)
    elif proto == 17:
        _mask_quic(src, base, l7, n, dst, quic_dcid, True)


@njit(cache=True)
def _mask_tcp_timestamps(buf, p, end):
    while p < end:
        kind = buf[p]
        if kind == 0:
            break
        if kind == 1:
            p += 1
            continue
        if p + 1 >= end or buf[p + 1] < 2:
            break
        length = np.int64(buf[p + 1])
        if kind == 8 and length == 10 and p + 10 <= end:
            for k in range(p + 2, p + 10):
                buf[k] = 0
        p += length


@njit(cache=True)
def _view(d, f, row, layer, mask, scratch, out, at, limit, quic_dcid):
    """views.packet_view: writes the first `limit` bytes of the view to out[at:]; returns its full length."""
    strict = mask == 2
    l7 = row[D_L7]
    end = row[D_END]
    proto = row[D_PROTO]
    if layer == 3:  # payload
        length = end - l7
        take = min(length, limit)
        if strict and l7 < end and (proto == 17 or d[f + l7] == 0x16):
            for k in range(length):
                scratch[k] = d[f + l7 + k]
            _mask_payload(d, f + l7, 0, length, scratch, proto, quic_dcid)
            out[at : at + take] = scratch[:take]
        else:
            out[at : at + take] = d[f + l7 : f + l7 + take]
        return length
    l3 = row[D_L3]
    blen = end - l3
    b4 = row[D_L4] - l3
    b7 = l7 - l3
    buf = scratch
    buf[:blen] = d[f + l3 : f + end]
    if mask != 0:
        if row[D_VER] == 4:
            if strict:
                buf[4] = 0
                buf[5] = 0
                buf[10:20] = 0
            else:
                buf[12:20] = 0
        else:
            buf[8:40] = 0
            if strict:
                buf[1] &= 0xF0
                buf[2] = 0
                buf[3] = 0
        if strict:
            if proto == 6:
                buf[b4 : b4 + 12] = 0
                buf[b4 + 16 : b4 + 18] = 0
                if b7 > b4 + 20:
                    _mask_tcp_timestamps(buf, b4 + 20, b7)
            else:
                buf[b4 : b4 + 4] = 0
                buf[b4 + 6 : b4 + 8] = 0
            if b7 < blen:
                _mask_payload(d, f + l3, b7, blen, buf, proto, quic_dcid)
    # Layout: [14-byte rebuilt Ethernet header] + buf[first:] with 12 zero bytes after a UDP header.
    pad = 12 if proto == 17 else 0
    prefix = 14 if layer == 0 else 0
    first = b4 if layer == 2 else 0
    full = prefix + (blen - first) + pad
    w = 0  # bytes of the view written so far (at most limit)
    if prefix:
        for k in range(min(12, limit)):
            out[at + k] = 0
        if limit > 12:
            out[at + 12] = 0x08 if row[D_VER] == 4 else 0x86
        if limit > 13:
            out[at + 13] = 0x00 if row[D_VER] == 4 else 0xDD
        w = min(14, limit)
    split = b4 + 8 if pad else blen  # buf[first:split], pad, buf[split:blen]
    take = min(split - first, limit - w)
    if take > 0:
        out[at + w : at + w + take] = buf[first : first + take]
        w += take
    if pad:
        take = min(pad, limit - w)
        if take > 0:
            out[at + w : at + w + take] = 0
            w += take
        take = min(blen - split, limit - w)
        if take > 0:
            out[at + w : at + w + take] = buf[split : split + take]
            w += take
    return full


# -- sessions ----------------------------------------------------------------------------------
@njit(cache=True)
def _emit(slot, slot_ints, ended_slots, counters):
    slot_ints[slot, C_STATE] = 2
    ended_slots[counters[K_NEMIT]] = slot
    counters[K_NEMIT] += 1


@njit(cache=True)
def _tcp_segment(slot, direction, seq, length, slot_ints, seq_ranges, seq_range_counts):
    """Session.tcp_segment: (is_retransmission, relative sequence number)."""
    if slot_ints[slot, C_HASB0 + direction] == 0:
        slot_ints[slot, C_HASB0 + direction] = 1
        slot_ints[slot, C_BASE0 + direction] = seq
    base = slot_ints[slot, C_BASE0 + direction]
    rel = (seq - base) % _MOD
    if rel >= _HALF:
        rel -= _MOD
    end = rel + length
    r = slot * 2 + direction
    c = seq_range_counts[r]
    ranges = seq_ranges[r]
    if c == 0:
        if ranges.shape[0] < 1:
            ranges = np.empty((4, 2), np.int64)
            seq_ranges[r] = ranges
        ranges[0, 0] = rel
        ranges[0, 1] = end
        seq_range_counts[r] = 1
        return False, rel
    if rel == ranges[c - 1, 1]:
        ranges[c - 1, 1] = end
        return False, rel
    for i in range(c):
        if ranges[i, 0] <= rel and end <= ranges[i, 1]:
            return True, rel
    if rel < ranges[c - 1, 1]:
        slot_ints[slot, C_OOO] = 1
    # Insert in order, then merge: the list is always sorted, disjoint and non-touching, so this
    # gives what the reference's append + sort + merge gives.
    pos = c
    for i in range(c):
        if rel < ranges[i, 0] or (rel == ranges[i, 0] and end < ranges[i, 1]):
            pos = i
            break
    tmp = np.empty((c + 1, 2), np.int64)
    tmp[:pos] = ranges[:pos]
    tmp[pos, 0] = rel
    tmp[pos, 1] = end
    tmp[pos + 1 :] = ranges[pos:c]
    merged = np.empty((c + 1, 2), np.int64)
    merged[0] = tmp[0]
    m = 1
    for i in range(1, c + 1):
        if tmp[i, 0] <= merged[m - 1, 1]:
            if tmp[i, 1] > merged[m - 1, 1]:
                merged[m - 1, 1] = tmp[i, 1]
        else:
            merged[m] = tmp[i]
            m += 1
    if ranges.shape[0] < m:
        ranges = np.empty((2 * m, 2), np.int64)
        seq_ranges[r] = ranges
    ranges[:m] = merged[:m]
    seq_range_counts[r] = m
    return False, rel


# The session table: open addressing over slot_index (4x the slots, a power of two), keys kept in the
# slot rows. A Python dict iterates in insertion order, and every insertion takes a new serial
# number, so "dict order" is serial order: the idle scan and close sort by it.
@njit(cache=True)
def _hash(key):
    h = np.uint64(0x243F6A8885A308D3)
    for k in range(12):
        h = (h ^ np.uint64(key[k])) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
    return h


@njit(cache=True)
def _find(slot_index, slot_ints, key):
    """(slot or -1, table position of the key or of the first free entry on its probe path)."""
    mask = slot_index.size - 1
    i = np.int64(_hash(key) & np.uint64(mask))
    free = -1
    while True:
        e = slot_index[i]
        if e == HT_EMPTY:
            return -1, (free if free >= 0 else i)
        if e == HT_DELETED:
            if free < 0:
                free = i
        else:
            same = True
            for k in range(12):
                if slot_ints[e, C_KEY + k] != key[k]:
                    same = False
                    break
            if same:
                return e, i
        i = (i + 1) & mask


@njit(cache=True)
def rebuild_table(st):
    """Put every live session (state 1) into an emptied slot_index: after growth, or to clear deletions."""
    slot_index, slot_ints, counters = st.slot_index, st.slot_ints, st.counters
    slot_index[:] = HT_EMPTY
    mask = slot_index.size - 1
    used = 0
    for slot in range(slot_ints.shape[0]):
        if slot_ints[slot, C_STATE] != 1:
            continue
        key = (slot_ints[slot, C_KEY], slot_ints[slot, C_KEY + 1], slot_ints[slot, C_KEY + 2], slot_ints[slot, C_KEY + 3], slot_ints[slot, C_KEY + 4],
               slot_ints[slot, C_KEY + 5], slot_ints[slot, C_KEY + 6], slot_ints[slot, C_KEY + 7], slot_ints[slot, C_KEY + 8], slot_ints[slot, C_KEY + 9],
               slot_ints[slot, C_KEY + 10], slot_ints[slot, C_KEY + 11])
        i = np.int64(_hash(key) & np.uint64(mask))
        while slot_index[i] != HT_EMPTY:
            i = (i + 1) & mask
        slot_index[i] = slot
        used += 1
    counters[K_HTUSED] = used


@njit(cache=True)
def _live_in_order(slot_ints, slot_floats, horizon):
    """Live slots (idle before `horizon` when it is finite), in serial (dict) order."""
    count = 0
    for slot in range(slot_ints.shape[0]):
        if slot_ints[slot, C_STATE] == 1 and slot_floats[slot, F_LAST] < horizon:
            count += 1
    slots = np.empty(count, np.int64)
    serials = np.empty(count, np.int64)
    j = 0
    for slot in range(slot_ints.shape[0]):
        if slot_ints[slot, C_STATE] == 1 and slot_floats[slot, F_LAST] < horizon:
            slots[j] = slot
            serials[j] = slot_ints[slot, C_SERIAL]
            j += 1
    return slots[np.argsort(serials)]


@njit(cache=True)
def _remove(slot_index, slot_ints, slot):
    key = (slot_ints[slot, C_KEY], slot_ints[slot, C_KEY + 1], slot_ints[slot, C_KEY + 2], slot_ints[slot, C_KEY + 3], slot_ints[slot, C_KEY + 4],
           slot_ints[slot, C_KEY + 5], slot_ints[slot, C_KEY + 6], slot_ints[slot, C_KEY + 7], slot_ints[slot, C_KEY + 8], slot_ints[slot, C_KEY + 9],
           slot_ints[slot, C_KEY + 10], slot_ints[slot, C_KEY + 11])
    found, pos = _find(slot_index, slot_ints, key)
    slot_index[pos] = HT_DELETED


@njit(cache=True)
def _flush_idle(now, st, cfg):
    for slot in _live_in_order(st.slot_ints, st.slot_floats, now - cfg.timeout):
        _remove(st.slot_index, st.slot_ints, slot)
        _emit(slot, st.slot_ints, st.ended_slots, st.counters)


@njit(cache=True)
def flush_idle(now, st, cfg):
    """SessionAssembler.flush_idle: every session silent for longer than the timeout at time `now`."""
    _flush_idle(now, st, cfg)


@njit(cache=True)
def evict_oldest(count, st):
    """SessionAssembler._evict: the `count` least recently active sessions end (bounded live state)."""
    slot_index, slot_ints, slot_floats, ended_slots, counters = (st.slot_index, st.slot_ints, st.slot_floats,
                                                                 st.ended_slots, st.counters)
    slots = _live_in_order(slot_ints, slot_floats, np.inf)
    last = np.empty(slots.size, np.float64)
    for j in range(slots.size):
        last[j] = slot_floats[slots[j], F_LAST]
    order = np.argsort(last, kind="mergesort")
    count = min(count, slots.size)
    for j in range(count):
        slot = slots[order[j]]
        _remove(slot_index, slot_ints, slot)
        _emit(slot, slot_ints, ended_slots, counters)
    return count


@njit(cache=True)
def close_all(st):
    """SessionAssembler.close: every live session, oldest first (stable: ties in dict order)."""
    slot_index, slot_ints, slot_floats, ended_slots, counters = (st.slot_index, st.slot_ints, st.slot_floats,
                                                                 st.ended_slots, st.counters)
    slots = _live_in_order(slot_ints, slot_floats, np.inf)
    starts = np.empty(slots.size, np.float64)
    for j in range(slots.size):
        starts[j] = slot_floats[slots[j], F_START]
    order = np.argsort(starts, kind="mergesort")
    for j in range(slots.size):
        _emit(slots[order[j]], slot_ints, ended_slots, counters)
    slot_index[:] = HT_EMPTY
    counters[K_HTUSED] = 0


# The hot path stays in one loop, and the arrays come out of `st` once per call: with each
# per-packet step a helper taking `st` (or even its arrays one by one) the loop ran 2-2.5x slower,
# from the reference counts of every array handed over (benchmarks/RESULTS.md, "prep
# throughput", 2026-11-30). Helpers are for steps that not every packet takes.
@njit(cache=True, nogil=True)
def assemble(data, offs, times, decoded, first, n, st, cfg):
    """SessionAssembler.add for packets first..n-1 (skipped ones ignored); (code, next packet).

    `st` is the engine's `State`, `cfg` its `Settings`. With `cfg.after` > 0 (live), a session
    whose `after`-th packet is kept goes into `st.triggered_slots`, with what it had stored then,
    so that it can be decided on exactly those packets however many more arrive in the same
    block. A slot triggers once per life."""
    counters, slot_index, slot_ints, slot_floats = st.counters, st.slot_index, st.slot_ints, st.slot_floats
    packet_pool, packet_times, view_pool, view_times = st.packet_pool, st.packet_times, st.view_pool, st.view_times
    seq_ranges, seq_range_counts, arena, scratch = st.seq_ranges, st.seq_range_counts, st.arena, st.scratch
    bidir, timeout, view_limit, mask = cfg.bidir, cfg.timeout, cfg.view_limit, cfg.mask
    for i in range(first, n):
        row = decoded[i]
        if row[D_CODE] != 0:
            continue
        code, room = _room(row, counters, arena.size, view_limit, mask)  # for the worst case of this packet
        if code != DONE:
            return code, i
        counters[K_FRAGKEPT] += row[D_FRAGM]  # 0 or 1
        ts, flags = times[i], row[D_FLAGS]
        a = (row[D_S0], row[D_S0 + 1], row[D_S0 + 2], row[D_S0 + 3], row[D_SPORT])
        b = (row[D_D0], row[D_D0 + 1], row[D_D0 + 2], row[D_D0 + 3], row[D_DPORT])
        if bidir and not a <= b:
            a, b = b, a
        key = (row[D_VER], row[D_PROTO], a[0], a[1], a[2], a[3], a[4], b[0], b[1], b[2], b[3], b[4])
        slot, pos = _find(slot_index, slot_ints, key)
        if slot >= 0 and (ts - slot_floats[slot, F_LAST] > timeout
                          or (slot_ints[slot, C_CLOSING] and flags & (SYN | ACK) == SYN)):
            slot_index[pos] = HT_DELETED  # idle past the timeout, or a SYN after FIN/RST: a new session
            _emit(slot, slot_ints, st.ended_slots, counters)
            slot = -1
            pos = _find(slot_index, slot_ints, key)[1]
        if slot < 0:
            slot = _new_session(row, key, ts, pos, st)
        s = slot_ints[slot]
        if ts > slot_floats[slot, F_LAST]:  # any packet, even one dropped below, keeps it alive
            slot_floats[slot, F_LAST] = ts
        direction = 0
        if bidir and not (row[D_SPORT] == s[C_CLPORT] and row[D_S0] == s[C_CL0] and row[D_S0 + 1] == s[C_CL0 + 1]
                          and row[D_S0 + 2] == s[C_CL0 + 2] and row[D_S0 + 3] == s[C_CL0 + 3]):
            direction = 1
        # TCP: retransmissions and pure ACKs are dropped (and counted); FIN or RST marks the session closing
        plen, rel, hasrel = row[D_PLEN], 0, 0
        if row[D_PROTO] == 6:
            if plen:
                retransmitted, rel = _tcp_segment(slot, direction, row[D_SEQ], plen, slot_ints, seq_ranges, seq_range_counts)
                hasrel = 1
                if retransmitted:
                    counters[K_RETR] += 1
                    s[C_RETR] += 1
                    continue
            elif not flags & (SYN | FIN | RST):
                counters[K_PACK] += 1
                s[C_PACKS] += 1
                continue
            if flags & (FIN | RST):
                s[C_CLOSING] = 1
        _keep_packet(slot, row, ts, direction, s, slot_floats, packet_pool, packet_times, counters)
        limit = view_limit
        if mask == 2:  # the strict mask's state: where a direction's TLS hello ends, QUIC connection IDs
            if hasrel:
                if s[C_HELLO0 + direction] == 0:  # the direction's first payload segment
                    s[C_HELLO0 + direction] = 1 + _record_end(data, offs[i] + row[D_L7], row[D_END] - row[D_L7])
                if rel < s[C_HELLO0 + direction] - 1:
                    limit = room  # stored whole: it may hold part of a TLS hello
            elif row[D_PROTO] == 17:
                scil = _quic_scid(data, offs[i], row[D_L7], row[D_END])
                if scil >= 0:
                    s[C_QUIC] = 1
                    s[C_CID0 + 1 - direction] = scil + 1
        if (s[C_STNE] < cfg.store_packets or s[C_STB] < cfg.store_bytes) and s[C_NST] < MAX_STORED:
            _store_view(data, offs[i], row, ts, direction, rel, hasrel, limit, s, view_pool, view_times, arena,
                        scratch, counters, cfg)
        if s[C_NPK] == cfg.after:
            _trigger(slot, s, st.triggered_slots, counters)
        counters[K_SINCE] += 1
        if counters[K_SINCE] >= IDLE_SCAN_EVERY:
            counters[K_SINCE] = 0
            _flush_idle(ts, st, cfg)
    return DONE, n


@njit(cache=True)
def _trigger(slot, s, triggered_slots, counters):
    """Live: the session's `after`-th packet was kept; note what it had stored then."""
    s[C_TNST] = s[C_NST]
    s[C_TPAY] = s[C_PAY]
    triggered_slots[counters[K_NTRIG]] = slot
    counters[K_NTRIG] += 1


@njit(cache=True)
def _room(row, counters, arena_size, view_limit, mask):
    """(DONE or the NEED_* code of the first pool short of room for this packet, arena bytes it may take)."""
    if counters[K_NSFREE] == 0:
        return NEED_SLOT, 0
    if counters[K_PFREE] < 0:
        return NEED_PACKET, 0
    if counters[K_EFREE] < 0:
        return NEED_STORED, 0
    room = view_limit
    if mask == 2 and row[D_PROTO] == 6 and row[D_PLEN] > 0:  # may be stored whole (a TLS hello)
        room = max(view_limit, row[D_END] - row[D_L3] + 26)
    if counters[K_ARENA] + room > arena_size:
        counters[K_ROOM] = room
        return NEED_ARENA, room
    return DONE, room


@njit(cache=True)
def _new_session(row, key, ts, pos, st):
    counters, slot_index = st.counters, st.slot_index
    counters[K_NSFREE] -= 1
    slot = st.free_slots[counters[K_NSFREE]]
    s = st.slot_ints[slot]
    s[:] = 0
    s[C_SERIAL] = counters[K_SERIAL]
    counters[K_SERIAL] += 1
    s[C_STATE] = 1
    s[C_PROTO] = row[D_PROTO]
    s[C_VER] = row[D_VER]
    flags, sport, dport = row[D_FLAGS], row[D_SPORT], row[D_DPORT]
    client_is_src = not (flags & (SYN | ACK) == (SYN | ACK))  # a capture that starts at the SYN-ACK
    src = D_S0 if client_is_src else D_D0
    dst = D_D0 if client_is_src else D_S0
    for w in range(4):
        s[C_CL0 + w] = row[src + w]
        s[C_SV0 + w] = row[dst + w]
    s[C_CLPORT] = sport if client_is_src else dport
    s[C_SVPORT] = dport if client_is_src else sport
    s[C_PHEAD] = -1
    s[C_PTAIL] = -1
    s[C_SHEAD] = -1
    s[C_STAIL] = -1
    for k in range(12):
        s[C_KEY + k] = key[k]
    for column in (F_START, F_LAST, F_TMIN, F_TMAX):
        st.slot_floats[slot, column] = ts
    st.seq_range_counts[2 * slot] = 0
    st.seq_range_counts[2 * slot + 1] = 0
    if slot_index[pos] == HT_EMPTY:
        counters[K_HTUSED] += 1
    slot_index[pos] = slot
    counters[K_STARTED] += 1
    if 2 * counters[K_HTUSED] > slot_index.size:  # too many deleted entries: slow probes
        rebuild_table(st)
    return slot


@njit(cache=True)
def _keep_packet(slot, row, ts, direction, s, slot_floats, pool, packet_times, counters):
    """Append the packet to the session's kept packets (size, direction, flags, time); `s`: its row."""
    node = counters[K_PFREE]
    counters[K_PFREE] = pool[node, P_NEXT]
    pool[node, P_SIZE] = row[D_IPLEN]
    pool[node, P_DIRFLAGS] = (direction << 8) | row[D_FLAGS]
    pool[node, P_NEXT] = -1
    packet_times[node] = ts
    if s[C_PTAIL] >= 0:
        pool[s[C_PTAIL], P_NEXT] = node
    else:
        s[C_PHEAD] = node
    s[C_PTAIL] = node
    s[C_NPK] += 1
    s[C_BYTES] += row[D_IPLEN]
    if direction == 0:
        s[C_FWD] += 1
        s[C_BYTESF] += row[D_IPLEN]
    if s[C_NPK] == 1 or ts < slot_floats[slot, F_TMIN]:
        slot_floats[slot, F_TMIN] = ts
    if s[C_NPK] == 1 or ts > slot_floats[slot, F_TMAX]:
        slot_floats[slot, F_TMAX] = ts
    s[C_PAY] += row[D_PLEN]


@njit(cache=True)
def _store_view(data, frame, row, ts, direction, rel, hasrel, limit, s, views, view_times, arena, scratch, counters, cfg):
    """Store the packet's masked layer view in the arena and chain it to the session's views (`s`: its row)."""
    at = counters[K_ARENA]
    full = _view(data, frame, row, cfg.layer, cfg.mask, scratch, arena, at, limit, s[C_CID0 + direction] - 1)
    if full <= 0:
        return
    e = counters[K_EFREE]
    counters[K_EFREE] = views[e, E_NEXT]
    views[e, E_DIR] = direction
    views[e, E_REL] = rel
    views[e, E_HASREL] = hasrel
    views[e, E_OFF] = at
    views[e, E_LEN] = min(full, limit)
    views[e, E_NEXT] = -1
    pad = 12 if row[D_PROTO] == 17 else 0  # views.view_offsets
    if cfg.layer == 3:
        views[e, E_L7] = 0
    elif cfg.layer == 2:
        views[e, E_L7] = row[D_L7] - row[D_L4] + pad
    else:
        views[e, E_L7] = (14 if cfg.layer == 0 else 0) + row[D_L7] - row[D_L3] + pad
    if s[C_QUIC] and s[C_CID0 + direction] == 0 and _mask_quic(data, frame, row[D_L7], row[D_END], scratch, -1, False):
        counters[K_QUICLEFT] += 1
    view_times[e] = ts
    counters[K_ARENA] = at + views[e, E_LEN]
    if s[C_STAIL] >= 0:
        views[s[C_STAIL], E_NEXT] = e
    else:
        s[C_SHEAD] = e
    s[C_STAIL] = e
    s[C_STB] += full
    s[C_STNE] += 1
    s[C_NST] += 1


@njit(cache=True)
def compact_arena(st, new_arena):
    """Copy the views of every session still holding slots into `new_arena` (arena is full)."""
    slot_ints, view_pool, arena, counters = st.slot_ints, st.view_pool, st.arena, st.counters
    top = 0
    for slot in range(slot_ints.shape[0]):
        if slot_ints[slot, C_STATE] == 0:
            continue
        e = slot_ints[slot, C_SHEAD]
        while e >= 0:
            length = view_pool[e, E_LEN]
            off = view_pool[e, E_OFF]
            new_arena[top : top + length] = arena[off : off + length]
            view_pool[e, E_OFF] = top
            top += length
            e = view_pool[e, E_NEXT]
    counters[K_ARENA] = top


# -- finished sessions -> tensors ----------------------------------------------------------------
@njit(cache=True)
def _stable_order(keys_f, keys_i, idx, use_float):
    """Insertion sort of idx by keys (stable, as Python's sorted); sessions store <= 256 views."""
    for a in range(1, idx.size):
        v = idx[a]
        b = a - 1
        while b >= 0 and ((keys_f[idx[b]] > keys_f[v]) if use_float else (keys_i[idx[b]] > keys_i[v])):
            idx[b + 1] = idx[b]
            b -= 1
        idx[b + 1] = v


class Tensors(NamedTuple):
    """What `build_tensors` fills for a batch of sessions."""

    images: np.ndarray  # (n, image bytes) uint8
    rows: np.ndarray  # (n, packets, packet bytes) uint8
    times: np.ndarray  # kept packets of all sessions, session by session: time ...
    sizes: np.ndarray  # ... IP size ...
    dirs: np.ndarray  # ... direction ...
    flags: np.ndarray  # ... TCP flags
    lengths: np.ndarray  # (n,) kept packets per session


@njit(cache=True, nogil=True)
def build_tensors(slots, st, out, after, mask):
    """Tensors.Featurizer._byte_rows (after Session.ordered_views) and the packet arrays of each
    slot into `out` (a `Tensors`); `after` > 0: of its first `after` kept packets only (a session
    as it was at its live trigger). The strict mask of hellos cut across segments is applied to
    the views in the arena (it can be applied again: it only zeroes)."""
    p = 0
    views = np.empty((7, MAX_STORED), np.int64)  # per stored view: the _V_* fields
    ts = np.empty(MAX_STORED, np.float64)
    work = np.empty((5, MAX_STORED), np.int64)  # sort orders and positions
    for j in range(slots.size):
        s = st.slot_ints[slots[j]]
        count = _kept_packets(s, st, after, out, p)
        out.lengths[j] = count
        p += count
        k = _load_views(s, st, after, views, ts)
        source = _ordered_views(s, k, views, ts, work)
        if mask == 2 and s[C_PROTO] == 6:  # Session.ordered_views: hellos on each direction's stream
            _mask_hellos(st.arena, k, source, views, ts, work)
        _fill_rows(j, k, source, views, st.arena, out)
    return p


_V_DIR, _V_REL, _V_HASREL, _V_OFF, _V_LEN, _V_L7 = 0, 1, 2, 3, 4, 5


@njit(cache=True)
def _kept_packets(s, st, after, out, p):
    """A session's kept packets (all, or its first `after`) into out.times/sizes/dirs/flags from `p`."""
    node = s[C_PHEAD]
    count = 0
    limit = s[C_NPK] if after <= 0 else min(after, s[C_NPK])
    while node >= 0 and count < limit:
        out.times[p + count] = st.packet_times[node]
        out.sizes[p + count] = st.packet_pool[node, P_SIZE]
        out.dirs[p + count] = st.packet_pool[node, P_DIRFLAGS] >> 8
        out.flags[p + count] = st.packet_pool[node, P_DIRFLAGS] & 0xFF
        count += 1
        node = st.packet_pool[node, P_NEXT]
    return count


@njit(cache=True)
def _load_views(s, st, after, views, ts):
    """A session's stored views (all, or those it had at its live trigger) into `views`/`ts`; how many."""
    k = s[C_NST] if after <= 0 else s[C_TNST]
    e = s[C_SHEAD]
    for i in range(k):
        ts[i] = st.view_times[e]
        views[_V_DIR, i] = st.view_pool[e, E_DIR]
        views[_V_REL, i] = st.view_pool[e, E_REL]
        views[_V_HASREL, i] = st.view_pool[e, E_HASREL]
        views[_V_OFF, i] = st.view_pool[e, E_OFF]
        views[_V_LEN, i] = st.view_pool[e, E_LEN]
        views[_V_L7, i] = st.view_pool[e, E_L7]
        e = st.view_pool[e, E_NEXT]
    return k


@njit(cache=True)
def _ordered_views(s, k, views, ts, work):
    """The view filling each place: by time, then TCP payload segments of each direction in
    sequence order (Session.ordered_views); returns work[1, :k]."""
    order, source, slot_at, by_seq_all = work[0, :k], work[1, :k], work[2], work[3]
    rel = views[_V_REL]
    for i in range(k):
        order[i] = i
    _stable_order(ts, rel, order, True)
    source[:] = order  # the entry whose view fills each time slot
    if s[C_OOO] and s[C_PROTO] == 6:
        for direction in range(2):
            m = 0
            for i in range(k):
                if views[_V_DIR, order[i]] == direction and views[_V_HASREL, order[i]]:
                    slot_at[m] = i
                    m += 1
            by_seq = by_seq_all[:m]
            for i in range(m):
                by_seq[i] = order[slot_at[i]]
            _stable_order(ts, rel, by_seq, False)
            for i in range(m):
                source[slot_at[i]] = by_seq[i]
    return source


@njit(cache=True)
def _mask_hellos(arena, k, source, views, ts, work):
    """The strict mask of a TLS hello cut across segments, on each direction's stream."""
    segs_all = work[4]
    for direction in range(2):
        m = 0
        for i in range(k):
            if views[_V_DIR, source[i]] == direction and views[_V_HASREL, source[i]]:
                segs_all[m] = source[i]
                m += 1
        if m > 1:
            segs = segs_all[:m]
            _stable_order(ts, views[_V_REL], segs, False)
            _mask_hello_stream(arena, segs, views[_V_REL], views[_V_OFF], views[_V_LEN], views[_V_L7])


@njit(cache=True)
def _fill_rows(j, k, source, views, arena, out):
    """Session j's image (first bytes of its ordered views) and packet rows."""
    packets, packet_bytes = out.rows.shape[1], out.rows.shape[2]
    image_bytes = out.images.shape[1]
    w = 0
    for i in range(k):
        e = source[i]
        length, off = views[_V_LEN, e], views[_V_OFF, e]
        if i < packets:
            take = min(length, packet_bytes)
            out.rows[j, i, :take] = arena[off : off + take]
        if w < image_bytes:
            take = min(length, image_bytes - w)
            out.images[j, w : w + take] = arena[off : off + take]
            w += take


@njit(cache=True)
def free_sessions(slots, st):
    """Give the slots of harvested sessions and their pool nodes back to the free lists."""
    slot_ints, packet_pool, view_pool, free_slots, counters = (st.slot_ints, st.packet_pool, st.view_pool,
                                                               st.free_slots, st.counters)
    for j in range(slots.size):
        slot = slots[j]
        s = slot_ints[slot]
        node = s[C_PHEAD]
        while node >= 0:
            nxt = packet_pool[node, P_NEXT]
            packet_pool[node, P_NEXT] = counters[K_PFREE]
            counters[K_PFREE] = node
            node = nxt
        e = s[C_SHEAD]
        while e >= 0:
            nxt = view_pool[e, E_NEXT]
            view_pool[e, E_NEXT] = counters[K_EFREE]
            counters[K_EFREE] = e
            e = nxt
        s[C_STATE] = 0
        s[C_PHEAD] = -1
        s[C_SHEAD] = -1
        free_slots[counters[K_NSFREE]] = slot
        counters[K_NSFREE] += 1


@njit(cache=True)
def extend_ranges(ranges, n):
    for _ in range(n):
        ranges.append(np.zeros((0, 2), np.int64))


@njit(cache=True)
def new_ranges(slots):
    """The per-direction range lists, made in compiled code: building typed containers from
    Python compiles helpers at every start, which the disk cache cannot keep."""
    ranges = List()
    for _ in range(2 * slots):
        ranges.append(np.zeros((0, 2), np.int64))
    return ranges
