"""Map every byte position of a session's `image` and `packets` tensors to its protocol field.

Explanations weigh byte positions; this module says what sits there: `eth.type`, `ip.ttl`,
`tcp.flags`, `tcp.option_kind`, `udp.pad`, `tls.record.length`, `payload[17]`, ... for the
session's layer view (`all`, `network`, `transport`, `payload`, see `views.py`).

The bytes alone do not always say where one packet ends and the next begins: in the
`transport` and `payload` views no length field survives, and a snapped frame is shorter than
its IP length says. So a mapping takes one `PacketLayout` per packet (its IP and TCP/UDP
header lengths and its view length), made from the decoded packet. For a prepared dataset
the layouts are rebuilt by reading the session's capture again with the dataset's own prep
settings (`dataset_layouts`): that needs no change to the dataset format and gives exactly the
packets the tensors were built from, which is checked byte for byte against the stored image.
Field structure inside a view (TCP options, TLS records, QUIC headers) is read from the tensor
bytes, which masking never touches there (only values such as addresses, ports, the SNI or
connection IDs are zeroed). Two things need the session, as the strict mask does: a TLS hello
cut across TCP segments is named on the direction's reassembled stream, and a QUIC short
header's connection ID by the length the peer's long headers gave (`tensor_fields`).

    >>> layout = PacketLayout.of(packet, "all")
    >>> packet_fields(view_bytes, layout, "all")[22]      # 'ip.ttl'
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from trafficlens.errors import CaptureError, DatasetError
from trafficlens.prep.tensors.quic import quic_fields, scid_length
from trafficlens.prep.tensors.tls import hello_stream, record_end

FILL = "(padding)"  # positions past the session's bytes: zero fill of the tensor
ETHERNET = ["eth.dst"] * 6 + ["eth.src"] * 6 + ["eth.type"] * 2
IPV4 = (["ip.version_ihl", "ip.dsfield"] + ["ip.len"] * 2 + ["ip.id"] * 2 + ["ip.flags_frag"] * 2
        + ["ip.ttl", "ip.proto"] + ["ip.checksum"] * 2 + ["ip.src"] * 4 + ["ip.dst"] * 4)
IPV6 = (["ipv6.version_tclass", "ipv6.tclass_flow"] + ["ipv6.flow"] * 2 + ["ipv6.plen"] * 2
        + ["ipv6.nxt", "ipv6.hlim"] + ["ipv6.src"] * 16 + ["ipv6.dst"] * 16)
TCP = (["tcp.srcport"] * 2 + ["tcp.dstport"] * 2 + ["tcp.seq"] * 4 + ["tcp.ack"] * 4
       + ["tcp.hdr_len", "tcp.flags"] + ["tcp.window"] * 2 + ["tcp.checksum"] * 2 + ["tcp.urgent"] * 2)
UDP = ["udp.srcport"] * 2 + ["udp.dstport"] * 2 + ["udp.length"] * 2 + ["udp.checksum"] * 2 + ["udp.pad"] * 12
_TCP_OPTIONS = {2: "mss", 3: "wscale", 4: "sack_perm", 5: "sack", 8: "timestamp", 30: "mptcp", 34: "tfo"}
_TLS_CONTENT = {20: "tls.change_cipher_spec", 21: "tls.alert", 22: "tls.handshake", 23: "tls.app_data", 24: "tls.heartbeat"}
_TLS_EXTENSIONS = {0: "server_name", 5: "status_request", 10: "supported_groups", 11: "ec_point_formats",
                   13: "signature_algorithms", 16: "alpn", 18: "sct", 21: "padding", 23: "extended_master_secret",
                   35: "session_ticket", 41: "pre_shared_key", 43: "supported_versions", 45: "psk_key_exchange_modes",
                   51: "key_share", 65281: "renegotiation_info"}
# Session tickets, the pre_shared_key's values and QUIC Initial tokens: what mask_version 3 adds to `strict`.
TICKET_FIELDS = ("tls.handshake.session_ticket", "tls.handshake.psk_identity", "tls.handshake.psk_ticket_age",
                 "tls.handshake.psk_binder", "quic.token")
# Fields each mask zeroes (mask_version 3, `views.packet_view`; the MACs are never kept): an
# explanation marks them and never ranks them, since no value reached the model there.
_PAPER = frozenset({"eth.dst", "eth.src", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst"})
MASKED = {
    "none": frozenset({"eth.dst", "eth.src"}),
    "paper": _PAPER,
    "strict": _PAPER | {"ip.id", "ip.checksum", "ipv6.flow", "tcp.srcport", "tcp.dstport", "tcp.seq", "tcp.ack",
                        "tcp.checksum", "tcp.option.timestamp", "udp.srcport", "udp.dstport", "udp.checksum",
                        "tls.handshake.sni", "tls.handshake.random", "tls.handshake.session_id",
                        "tls.handshake.key_exchange", "quic.dcid", "quic.scid", *TICKET_FIELDS},
}
# Fields that name a host, a capture or a moment rather than an application: weight on them is
# a shortcut (most are zeroed by the `strict` mask, TTL and window are not).
IDENTIFYING = frozenset({
    "eth.dst", "eth.src", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "ip.id", "ip.checksum", "ip.ttl", "ipv6.hlim",
    "ipv6.flow", "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport", "tcp.seq", "tcp.ack", "tcp.checksum",
    "udp.checksum", "tcp.option.timestamp", "tls.handshake.sni", "tls.handshake.random", "tls.handshake.session_id",
    "tls.handshake.key_exchange", "quic.dcid", "quic.scid", *TICKET_FIELDS,
})


@dataclass(frozen=True)
class PacketLayout:
    """Where the headers of one packet sit: enough to name every byte of its layer view."""

    version: int  # 4 or 6
    proto: int  # 6 TCP, 17 UDP
    ip_header: int  # IP header bytes, IPv4 options and IPv6 extension headers included
    l4_header: int  # TCP header with options, or 8 for UDP (before the 12 bytes of padding)
    length: int  # bytes of this packet's view as stored (snapped frames are shorter)
    direction: int = 0  # 0 from the session's initiator, 1 towards it
    rel: int | None = None  # TCP payload: sequence number relative to the direction's first segment

    @classmethod
    def of(cls, packet, layer: str, length: int | None = None, direction: int = 0,
           rel: int | None = None) -> "PacketLayout":
        """The layout of a decoded `Packet`; `length` defaults to its full view length."""
        if length is None:
            from trafficlens.prep.tensors.views import packet_view

            length = len(packet_view(packet, layer, "none"))
        return cls(packet.version, packet.proto, packet.l4 - packet.l3, packet.l7 - packet.l4, length, direction, rel)

    def payload_offset(self, layer: str) -> int:
        """Where the application payload starts in this packet's view."""
        if layer == "payload":
            return 0
        header = self.l4_header + (12 if self.proto == 17 else 0)
        if layer == "transport":
            return header
        return header + self.ip_header + (14 if layer == "all" else 0)


def header_fields(layout: PacketLayout, layer: str) -> list[str]:
    """Names of the header bytes that precede the payload in this layer view."""
    if layer == "payload":
        return []
    names: list[str] = []
    if layer in ("all", "network"):
        if layer == "all":
            names += ETHERNET
        fixed = IPV4 if layout.version == 4 else IPV6
        names += fixed + ["ip.options" if layout.version == 4 else "ipv6.ext"] * (layout.ip_header - len(fixed))
    if layout.proto == 17:
        return names + UDP
    return names + TCP + ["tcp.options"] * (layout.l4_header - 20)  # refined from the bytes


def packet_fields(view: bytes | np.ndarray, layout: PacketLayout, layer: str, quic_dcid: int = -1) -> list[str]:
    """One field name per byte of `view` (this packet's bytes in the layer view).

    `quic_dcid`: the connection ID length of a QUIC short header in this direction, when the
    session told it (see `tensor_fields`)."""
    view = bytes(view)
    names = header_fields(layout, layer)
    if layer != "payload" and layout.proto == 6 and layout.l4_header > 20:
        start = len(names) - (layout.l4_header - 20)
        names[start:] = _tcp_option_fields(view, start, len(names))
    payload = _quic_payload_fields(view, len(names), quic_dcid) if layout.proto == 17 else None
    return (names + (payload or _payload_fields(view, len(names))))[: len(view)]


def _quic_payload_fields(view: bytes, start: int, quic_dcid: int) -> list[str] | None:
    """Names of a UDP payload holding QUIC packets (`quic.quic_fields`), else None."""
    fields, _ = quic_fields(view, start, len(view), quic_dcid)
    if not fields:
        return None
    names = [f"payload[{i}]" for i in range(len(view) - start)]
    for name, offset, length in fields:
        names[offset - start : offset - start + length] = [name] * length
    return names


def _tcp_option_fields(view: bytes, start: int, end: int) -> list[str]:
    names: list[str] = []
    p = start
    while p < end:
        kind = view[p] if p < len(view) else None
        if kind is None or kind == 0:  # end of option list: the rest is padding
            names += ["tcp.option_kind"] + ["tcp.option.pad"] * (end - p - 1)
            break
        if kind == 1:
            names.append("tcp.option_kind")  # NOP
            p += 1
            continue
        size = view[p + 1] if p + 1 < len(view) else 2
        if size < 2 or p + size > end:  # malformed: name the rest as raw option bytes
            names += ["tcp.option_kind"] + ["tcp.options"] * (end - p - 1)
            break
        names += ["tcp.option_kind", "tcp.option_len"] + [f"tcp.option.{_TCP_OPTIONS.get(kind, 'value')}"] * (size - 2)
        p += size
    return names


class _Cursor:
    """Appends field names while reading lengths from the bytes, never past `end`."""

    def __init__(self, view: bytes, start: int, end: int, names: list[str]):
        self.view, self.p, self.end, self.names = view, start, end, names

    def take(self, name: str, count: int) -> None:
        count = max(0, min(count, self.end - self.p))
        self.names += [name] * count
        self.p += count

    def number(self, size: int) -> int:
        """The big-endian value of the next `size` bytes (0 where they run out)."""
        raw = self.view[self.p : min(self.p + size, self.end)]
        return int.from_bytes(raw, "big") if len(raw) == size else 0


def _payload_fields(view: bytes, start: int) -> list[str]:
    """TLS records when the payload starts with one, else `payload[i]` by offset."""
    names: list[str] = []
    p, n = start, len(view)
    while p + 5 <= n and view[p] in _TLS_CONTENT and view[p + 1] == 3 and view[p + 2] <= 4:
        content = view[p]
        size = int.from_bytes(view[p + 3 : p + 5], "big")
        names += ["tls.record.content_type", "tls.record.version", "tls.record.version",
                  "tls.record.length", "tls.record.length"]
        body_end = min(n, p + 5 + size)
        if content == 22:
            _handshake_fields(_Cursor(view, p + 5, body_end, names), first=p == start)
        else:
            names += [_TLS_CONTENT[content]] * (body_end - p - 5)
        p = p + 5 + size
    p = start + len(names)
    return names + [f"payload[{i}]" for i in range(p - start, n - start)]


def _handshake_fields(c: _Cursor, first: bool = False) -> None:
    """Handshake messages; `first`: the record opens the payload, where the strict mask reads a
    NewSessionTicket (as its first message only)."""
    opening = c.p if first else -1
    while c.p < c.end:
        kind, at = c.view[c.p], c.p
        c.take("tls.handshake.type", 1)
        length = c.number(3)
        c.take("tls.handshake.length", 3)
        body_end = min(c.end, c.p + length)
        if kind in (1, 2):  # ClientHello / ServerHello
            _hello_fields(_Cursor(c.view, c.p, body_end, c.names), client=kind == 1)
            c.p = body_end
        elif kind == 4 and at == opening:  # NewSessionTicket: lifetime hint (4), ticket length (2), ticket
            inner = _Cursor(c.view, c.p, body_end, c.names)
            inner.take("tls.handshake.ticket_lifetime_hint", 4)
            size = inner.number(2)
            inner.take("tls.handshake.session_ticket_length", 2)
            inner.take("tls.handshake.session_ticket", size)
            inner.take("tls.handshake.body", body_end - inner.p)
            c.p = body_end
        else:
            c.take("tls.handshake.body", body_end - c.p)


def _hello_fields(c: _Cursor, client: bool) -> None:
    c.take("tls.handshake.version", 2)
    c.take("tls.handshake.random", 32)
    size = c.view[c.p] if c.p < c.end else 0
    c.take("tls.handshake.session_id_length", 1)
    c.take("tls.handshake.session_id", size)
    if client:
        size = c.number(2)
        c.take("tls.handshake.cipher_suites_length", 2)
        c.take("tls.handshake.cipher_suites", size)
        size = c.view[c.p] if c.p < c.end else 0
        c.take("tls.handshake.comp_methods_length", 1)
        c.take("tls.handshake.comp_methods", size)
    else:
        c.take("tls.handshake.cipher_suite", 2)
        c.take("tls.handshake.comp_method", 1)
    size = c.number(2)
    c.take("tls.handshake.extensions_length", 2)
    ext_end = min(c.end, c.p + size)
    while c.p + 4 <= ext_end:
        kind, size = c.number(2), int.from_bytes(c.view[c.p + 2 : c.p + 4], "big")
        c.take("tls.handshake.extension.type", 2)
        c.take("tls.handshake.extension.len", 2)
        body_end = min(ext_end, c.p + size)
        if kind == 0 and client:  # list length (2), then name type (1) + length (2) + host name
            inner = _Cursor(c.view, c.p, body_end, c.names)
            inner.take("tls.handshake.extension.server_name", 2)
            while inner.p + 3 <= body_end:
                inner.take("tls.handshake.extension.server_name", 1)
                name_len = inner.number(2)
                inner.take("tls.handshake.extension.server_name", 2)
                inner.take("tls.handshake.sni", name_len)
            inner.take("tls.handshake.extension.server_name", body_end - inner.p)
        elif kind == 51:  # ClientHello: list length (2); then (one, from a server) group (2) + length (2) + key
            inner = _Cursor(c.view, c.p, body_end, c.names)
            if client:
                inner.take("tls.handshake.extension.key_share", 2)
            while inner.p + 4 <= body_end:
                inner.take("tls.handshake.extension.key_share", 2)
                size = inner.number(2)
                inner.take("tls.handshake.extension.key_share", 2)
                inner.take("tls.handshake.key_exchange", size)
                if not client:
                    break
            inner.take("tls.handshake.extension.key_share", body_end - inner.p)
        elif kind == 35 and client:
            c.take("tls.handshake.session_ticket", body_end - c.p)
        elif kind == 41 and client:
            _psk_fields(_Cursor(c.view, c.p, body_end, c.names))
        else:
            c.take(f"tls.handshake.extension.{_TLS_EXTENSIONS.get(kind, 'data')}", body_end - c.p)
        c.p = body_end
    c.take("tls.handshake.body", c.end - c.p)


def _psk_fields(c: _Cursor) -> None:
    """A ClientHello's pre_shared_key (`tls._psk_spans` reads the same)."""
    declared = c.number(2)
    c.take("tls.handshake.extension.pre_shared_key", 2)
    ids_end = min(c.end, c.p + declared)
    while c.p + 2 <= ids_end:
        size = c.number(2)
        c.take("tls.handshake.extension.pre_shared_key", 2)
        c.take("tls.handshake.psk_identity", min(size, ids_end - c.p))
        if c.p >= ids_end:
            break
        c.take("tls.handshake.psk_ticket_age", min(4, ids_end - c.p))
    c.take("tls.handshake.extension.pre_shared_key", ids_end - c.p)
    if c.p + 2 > c.end:
        c.take("tls.handshake.extension.pre_shared_key", c.end - c.p)
        return
    binders_end = min(c.end, c.p + 2 + c.number(2))
    c.take("tls.handshake.extension.pre_shared_key", 2)
    while c.p + 1 <= binders_end:
        size = c.view[c.p]
        c.take("tls.handshake.extension.pre_shared_key", 1)
        c.take("tls.handshake.psk_binder", min(size, binders_end - c.p))
    c.take("tls.handshake.extension.pre_shared_key", c.end - c.p)


# -- whole tensors -------------------------------------------------------------------------------
@dataclass
class TensorFields:
    """Field names of every position of one session's tensors.

    `image[i]` names image byte i and `image_packet[i]` says which packet it came from (-1:
    padding); `packets[m][b]` names byte b of packet row m.
    """

    layer: str
    image: list[str]
    image_packet: np.ndarray  # (K,) int
    packets: list[list[str]]  # M rows of B names

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "image": self.image, "image_packet": self.image_packet.tolist(),
                "packets": self.packets}


def tensor_fields(image: np.ndarray, layouts: list[PacketLayout], layer: str, packets: int, packet_bytes: int) -> TensorFields:
    """Name the positions of a session's image (its bytes, (K,)) and packets (M x B) tensors.

    The packets' views are cut back out of the image by the layouts' lengths, so the names
    inside each packet (TCP options, TLS records) come from the same bytes the model saw.
    Packet rows past the image's end are named from their headers alone. As the strict mask,
    QUIC short headers take their connection ID length from the peer's long headers before
    them, and a TLS hello longer than its first segment is named on its direction's stream.
    """
    k = len(image)
    image = bytes(np.asarray(image, dtype=np.uint8))
    views: list[bytes] = []
    per_packet: list[list[str]] = []
    cids = [-1, -1]
    offset = 0
    for layout in layouts:
        view = image[offset : offset + layout.length]
        per_packet.append(packet_fields(view, layout, layer, cids[layout.direction]))
        views.append(view)
        if layout.proto == 17:
            scil = scid_length(view, layout.payload_offset(layer), len(view))
            if scil >= 0:
                cids[1 - layout.direction] = scil
        offset += layout.length
    _name_hello_streams(views, per_packet, layouts, layer)
    names: list[str] = []
    owner: list[int] = []
    rows: list[list[str]] = []
    offset = 0
    for index, layout in enumerate(layouts):
        fields = per_packet[index]
        if len(views[index]) < layout.length:  # the image ends inside this packet: extend from the headers
            fields += _fields_without_bytes(layout, layer, len(fields), layout.length)
        if offset < k:
            take = min(k - offset, layout.length)
            names += fields[:take]
            owner += [index] * take
        if index < packets:
            rows.append(fields[:packet_bytes] + [FILL] * (packet_bytes - min(packet_bytes, layout.length)))
        offset += layout.length
    names += [FILL] * (k - len(names))
    owner += [-1] * (k - len(owner))
    rows += [[FILL] * packet_bytes for _ in range(packets - len(rows))]
    return TensorFields(layer, names, np.array(owner, dtype=np.int32), rows)


def _name_hello_streams(views: list[bytes], fields: list[list[str]], layouts: list[PacketLayout], layer: str) -> None:
    """Rename the payload bytes of TLS hellos cut across TCP segments (tls.hello_stream), in place."""
    for direction in (0, 1):
        idx = sorted((i for i, layout in enumerate(layouts)
                      if layout.proto == 6 and layout.direction == direction and layout.rel is not None),
                     key=lambda i: layouts[i].rel)
        segments = [(layouts[i].rel, views[i], layouts[i].payload_offset(layer)) for i in idx]
        stream, pieces = hello_stream(segments)
        if len(pieces) < 2:
            continue
        names = _payload_fields(bytes(stream), 0)[: record_end(stream, 0, len(stream))]
        for j, at in pieces:
            i, offset = idx[j], segments[j][2]
            part = names[at : at + len(views[i]) - offset]
            fields[i][offset : offset + len(part)] = part


def _fields_without_bytes(layout: PacketLayout, layer: str, start: int, end: int) -> list[str]:
    header = header_fields(layout, layer)
    names = header[start:end]
    first = max(start, len(header))
    return names + [f"payload[{i - len(header)}]" for i in range(first, end)]


# -- layouts of a prepared dataset's sessions, rebuilt from its captures -----------------------
def capture_path(dataset, relative: str, captures: Iterable[str | os.PathLike] = ()) -> Path | None:
    """Where the capture `relative` (the dataset's `capture` column) is now, or None."""
    for root in [*map(Path, captures), *map(Path, dataset.manifest.get("sources") or [])]:
        if root.is_file() and root.name == relative:
            return root
        if root.is_dir() and (root / relative).is_file():
            return root / relative
    return None


def _session_key(row: dict[str, Any], unit: str) -> tuple:
    proto = 6 if row["protocol"] == "TCP" else 17
    family = socket.AF_INET6 if ":" in row["src_ip"] else socket.AF_INET
    a = (socket.inet_pton(family, row["src_ip"]), int(row["src_port"]))
    b = (socket.inet_pton(family, row["dst_ip"]), int(row["dst_port"]))
    if unit == "flow":
        return (proto, a[0], a[1], b[0], b[1])
    return (proto, a, b) if a <= b else (proto, b, a)


def dataset_layouts(dataset, rows: Iterable[int], captures: Iterable[str | os.PathLike] = ()) -> dict[int, list[PacketLayout]]:
    """Packet layouts of dataset rows, rebuilt from their captures with the dataset's prep settings.

    Each capture is read once. A row whose capture cannot be found is left out (the caller
    says so); a rebuilt session whose bytes differ from the stored image is an error, since
    the capture changed after prep and the names would be wrong.
    """
    from trafficlens.capture import CaptureReader, decode
    from trafficlens.prep.config import PrepConfig
    from trafficlens.prep.tensors.examples import session_meta
    from trafficlens.prep.sessions.assembler import SessionAssembler

    config = PrepConfig.from_dict(dataset.config)
    table = dataset.table.select(["id", "capture", "src_ip", "src_port", "dst_ip", "dst_port", "protocol", "ts_start"])
    wanted_rows = sorted(set(int(r) for r in rows))
    by_capture: dict[str, dict[tuple, list[dict[str, Any]]]] = {}
    for r in wanted_rows:
        row = {name: table.column(name)[r].as_py() for name in table.column_names}
        by_capture.setdefault(row["capture"], {}).setdefault(_session_key(row, config.unit), []).append(row)
    image = dataset.tensor("image")
    out: dict[int, list[PacketLayout]] = {}
    for relative, wanted in by_capture.items():
        path = capture_path(dataset, relative, captures)
        if path is None:
            continue
        current: list[Any] = [None]
        pending: dict[Any, list[PacketLayout]] = {}  # wanted session -> layouts of its stored packets

        def watch(s, wanted=wanted, pending=pending, current=current) -> None:
            if s.key in wanted:
                stored = pending.setdefault(s, [])
                if len(s.stored) > len(stored):
                    _, direction, rel, view, _ = s.stored[-1]
                    stored.append(PacketLayout.of(current[0], config.layer, len(view), direction, rel))

        def emit(s, wanted=wanted, pending=pending, relative=relative) -> None:
            stored = pending.pop(s, None)
            if stored is None:
                return
            meta = session_meta(s, relative)
            for row in wanted[s.key]:
                if row["ts_start"] == meta["ts_start"] and row["src_port"] == meta["src_port"]:
                    _check(dataset, config, row, image[row["id"]], s, relative)
                    out[row["id"]] = [stored[i] for i in s.order()]

        assembler = SessionAssembler(config, emit, watch=watch)
        try:
            for raw in CaptureReader(path):
                packet = decode(raw)
                if type(packet) is not str:
                    current[0] = packet
                    assembler.add(packet)
        except (CaptureError, OSError):
            pass  # a damaged tail: prep kept the sessions before it, and so do we
        assembler.close()
    return out


def _check(dataset, config, row: dict[str, Any], stored_image: np.ndarray, s, relative: str) -> None:
    k = len(stored_image)
    rebuilt = np.frombuffer(b"".join(view for _, _, view in s.ordered_views())[:k].ljust(k, b"\0"), np.uint8)
    stored = np.asarray(stored_image)
    # An older strict mask zeroed a subset of what today's does: compare where today's kept a value.
    same = (rebuilt == stored)[rebuilt != 0].all() if config.mask_outdated else np.array_equal(rebuilt, stored)
    if not same:
        raise DatasetError(f"{relative}: session {row['id']} of {dataset.path} no longer matches its capture "
                           "(the capture changed after prep); field names cannot be rebuilt")
