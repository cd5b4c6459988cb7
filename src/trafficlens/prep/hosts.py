"""Which link-layer (MAC) address sent a session: learned from the packets, never a tensor.

The `all` layer view rebuilds the Ethernet header without addresses, and the session metadata
prep writes has none, so a model never sees a MAC. Grouping decisions per host (`predict --by
host --host-key mac`, `live --by host`) still wants one: a device keeps its MAC while its IP
changes (DHCP starts from 0.0.0.0), and one IP behind a router may be several devices.
`HostAddresses` watches the same packet blocks a session engine is fed and remembers, for each
5-tuple, the source MAC of the frames its initiator sent (and when it changed), so a session can
be named by the MAC of the frames that opened it.

    hosts = HostAddresses()
    for block in engine.blocks(reader):
        hosts.watch(block)
        engine.feed(block)
    hosts.mac_of(meta)          # "02:00:00:00:00:01", or None (no Ethernet or SLL frame seen)

Ethernet (with up to one 802.1Q tag) and Linux cooked (SLL) frames carrying IPv4 or IPv6 with
TCP or UDP directly after the fixed header are read; other frames are skipped. Memory is
bounded: past `max_entries` 5-tuples the least recently seen are forgotten.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from typing import Any

import numpy as np

from trafficlens.capture import linktypes as lt

_ETH_VLAN = 0x8100
_IPV4, _IPV6 = 0x0800, 0x86DD
_RECORD = 16 + 16 + 2 + 2 + 1 + 6  # sender, receiver, ports, protocol, MAC: one row per frame


class HostAddresses:
    """5-tuple -> the MAC its initiator sent from, fed with `PacketBlock`s (see module doc)."""

    def __init__(self, max_entries: int = 200_000):
        self.max_entries = max_entries
        # sender + receiver + ports + protocol (the 37 bytes `_frames` packs) -> [(first time, MAC)], one per change
        self._macs: OrderedDict[bytes, list[tuple[float, bytes]]] = OrderedDict()
        self._by_ip: OrderedDict[bytes, bytes] = OrderedDict()  # sender address -> its latest MAC

    def __len__(self) -> int:
        return len(self._macs)

    def watch(self, block) -> None:
        """Learn from one `PacketBlock` (data, offsets, caplens, lengths, times, linktypes)."""
        rows, times = _frames(block)
        if not len(rows):
            return
        # one row per distinct (5-tuple, MAC), at its first frame in the block
        _, first = np.unique(rows.view(f"V{_RECORD}").ravel(), return_index=True)
        first.sort()
        macs, by_ip = self._macs, self._by_ip
        for i in first.tolist():
            record = rows[i].tobytes()
            key, mac = record[:37], record[37:]
            seen = macs.pop(key, None)
            if seen is None:
                seen = [(float(times[i]), mac)]
            elif seen[-1][1] != mac:
                seen.append((float(times[i]), mac))
            macs[key] = seen
            sender = record[:16]
            if sender.strip(b"\0"):  # 0.0.0.0 / :: (DHCP, DAD) names no host by itself
                by_ip.pop(sender, None)
                by_ip[sender] = mac
        while len(macs) > self.max_entries:
            macs.popitem(last=False)
        while len(by_ip) > self.max_entries:
            by_ip.popitem(last=False)

    def mac_of(self, meta: dict[str, Any]) -> str | None:
        """The MAC the session's initiator (`src_ip`, `src_port`) sent from when the session
        started; else the latest MAC its address sent from; None when no frame told."""
        try:
            sender, receiver = _packed(meta["src_ip"]), _packed(meta["dst_ip"])
        except (KeyError, OSError, TypeError, ValueError):
            return None
        proto = 6 if meta.get("protocol") == "TCP" else 17
        key = sender + receiver + int(meta["src_port"]).to_bytes(2, "big") + int(meta["dst_port"]).to_bytes(2, "big") \
            + bytes([proto])
        seen = self._macs.get(key)
        mac = None
        if seen:
            start = meta.get("ts_start")
            mac = seen[0][1]
            for ts, candidate in seen[1:]:
                if start is not None and ts <= start:
                    mac = candidate
        else:
            mac = self._by_ip.get(sender)
        return None if mac is None else mac.hex(":")


def _packed(address: str) -> bytes:
    """An address as the 16 bytes `_frames` keeps (IPv4 right-padded with zeros)."""
    raw = socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    return raw.ljust(16, b"\0")


def _frames(block) -> tuple[np.ndarray, np.ndarray]:
    """(rows, times): one `_RECORD`-byte row per TCP/UDP frame of the block with a source MAC."""
    data, offsets, caplens, _, times, links = block
    data = np.asarray(data, dtype=np.uint8)
    offsets, caplens, links = (np.asarray(a, dtype=np.int64) for a in (offsets, caplens, links))
    eth = (links == lt.ETHERNET) & (caplens >= 14)
    sll = (links == lt.LINUX_SLL) & (caplens >= 16)
    if not (eth.any() or sll.any()):
        return np.zeros((0, _RECORD), np.uint8), np.zeros(0)

    def byte(at: np.ndarray) -> np.ndarray:
        return data[np.minimum(at, len(data) - 1)].astype(np.int64)

    o = offsets
    eth_type = byte(o + 12) << 8 | byte(o + 13)
    tagged = eth & (eth_type == _ETH_VLAN) & (caplens >= 18)
    eth_type = np.where(tagged, byte(o + 16) << 8 | byte(o + 17), eth_type)
    # SLL: address length at 4..5 (6 for Ethernet devices), the address at 6.., protocol at 14..15
    sll &= (byte(o + 4) << 8 | byte(o + 5)) == 6
    kind = np.where(sll, byte(o + 14) << 8 | byte(o + 15), eth_type)
    l3 = o + np.where(sll, 16, np.where(tagged, 18, 14))
    mac_at = o + 6  # Ethernet: the source after the destination; SLL: the sender's address
    end = o + caplens
    v4 = (eth | sll) & (kind == _IPV4) & (l3 + 20 <= end) & ((byte(l3) >> 4) == 4)
    v6 = (eth | sll) & (kind == _IPV6) & (l3 + 40 <= end) & ((byte(l3) >> 4) == 6)
    ihl = (byte(l3) & 15) * 4
    first_fragment = (byte(l3 + 6) & 0x1F) << 8 | byte(l3 + 7)
    proto = np.where(v4, byte(l3 + 9), byte(l3 + 6))
    l4 = np.where(v4, l3 + ihl, l3 + 40)
    keep = (v4 & (first_fragment == 0) | v6) & ((proto == 6) | (proto == 17)) & (l4 + 4 <= end)
    idx = np.flatnonzero(keep)
    if not len(idx):
        return np.zeros((0, _RECORD), np.uint8), np.zeros(0)
    rows = np.zeros((len(idx), _RECORD), np.uint8)
    is4 = v4[idx]
    base3, base4 = l3[idx], l4[idx]
    for j in range(16):  # sender at 0..15, receiver at 16..31 (IPv4: first 4 bytes)
        rows[:, j] = np.where(is4, np.where(j < 4, data[np.minimum(base3 + 12 + j, len(data) - 1)], 0),
                              data[np.minimum(base3 + 8 + j, len(data) - 1)])
        rows[:, 16 + j] = np.where(is4, np.where(j < 4, data[np.minimum(base3 + 16 + j, len(data) - 1)], 0),
                                   data[np.minimum(base3 + 24 + j, len(data) - 1)])
    for j in range(4):  # source and destination ports
        rows[:, 32 + j] = data[base4 + j]
    rows[:, 36] = proto[idx]
    for j in range(6):
        rows[:, 37 + j] = data[mac_at[idx] + j]
    return rows, np.asarray(times)[idx]
