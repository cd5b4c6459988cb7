"""Packets gathered into the blocks the compiled engine takes (no numba here: live imports it
whichever engine runs)."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from trafficlens.capture.reader import RawPacket


def packet_blocks(packets: Iterable[RawPacket | None], size: int = 512) -> Iterator[tuple[np.ndarray, ...] | None]:
    """`Engine.feed`'s arrays (data, offsets, captured lengths, lengths, times, link types) for
    every `size` packets; a `None` (a quiet source's heartbeat) ends the block and is passed on."""
    datas: list[bytes] = []
    times: list[float] = []
    origs: list[int] = []
    links: list[int] = []

    def block():
        caps = np.fromiter(map(len, datas), np.int64, len(datas))
        offs = np.zeros(len(datas), np.int64)
        np.cumsum(caps[:-1], out=offs[1:])
        out = (np.frombuffer(b"".join(datas), np.uint8), offs, caps, np.array(origs, np.int64),
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
