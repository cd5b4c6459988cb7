"""Packets gathered into the blocks session engines take (no numba here: live imports it
whichever engine runs)."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from trafficlens.capture.reader import RawPacket
from trafficlens.prep.engines.base import PacketBlock


def packet_blocks(packets: Iterable[RawPacket | None], size: int = 512) -> Iterator[PacketBlock | None]:
    """A `PacketBlock` for every `size` packets; a `None` (a quiet source's heartbeat) ends the
    block and is passed on."""
    datas: list[bytes] = []
    times: list[float] = []
    origs: list[int] = []
    links: list[int] = []

    def block():
        caps = np.fromiter(map(len, datas), np.int64, len(datas))
        offs = np.zeros(len(datas), np.int64)
        np.cumsum(caps[:-1], out=offs[1:])
        out = PacketBlock(np.frombuffer(b"".join(datas), np.uint8), offs, caps, np.array(origs, np.int64),
                          np.array(times, np.float64), np.array(links, np.int64))
        datas.clear(), times.clear(), origs.clear(), links.clear()
        return out

    for raw in packets:
        if raw is None:
            if datas:
                yield block()
            yield None
            continue
        datas.append(raw.data)
        times.append(raw.ts)
        origs.append(raw.orig_len)
        links.append(raw.linktype)
        if len(datas) >= size:
            yield block()
    if datas:
        yield block()


def block_from_pcapy(data, meta, linktype: int) -> PacketBlock | None:
    """pcapy-ng's `next_batch` (bytes, uint32 records: sec, usec, offset, caplen) as a block (the
    length on the wire is the caplen: the batch has no other)."""
    if not len(meta):
        return None
    records = np.frombuffer(meta, np.uint32).reshape(-1, 4).astype(np.int64)
    times = records[:, 0] + records[:, 1] * 1e-6
    caps = np.ascontiguousarray(records[:, 3])
    return PacketBlock(np.frombuffer(data, np.uint8), np.ascontiguousarray(records[:, 2]), caps, caps,
                       times, np.full(len(caps), linktype, np.int64))


def filter_block(block: PacketBlock, keep) -> PacketBlock:
    """The packets of `block` that `keep` (a `capture.bpf.PacketFilter`) matches."""
    data = block.data
    chosen = [i for i, (off, cap, link) in enumerate(zip(block.offsets.tolist(), block.caplens.tolist(),
                                                         block.linktypes.tolist()))
              if keep.matches(data[off : off + cap].tobytes(), link)]
    if len(chosen) == len(block):
        return block
    idx = np.asarray(chosen, dtype=np.int64)
    return PacketBlock(data, block.offsets[idx], block.caplens[idx], block.lengths[idx], block.times[idx],
                       block.linktypes[idx])
