"""Tiny captures for tests, built with trafficlens' own packet builders and writer."""

from __future__ import annotations

from pathlib import Path

from trafficlens.capture import PcapWriter
from trafficlens.capture import build

CLIENT, SERVER = "10.1.1.1", "10.2.2.2"


def tcp_frame(payload=b"", src=CLIENT, dst=SERVER, sport=40000, dport=443, seq=0, ack=0, flags="A",
              ident=0, options=b"") -> bytes:
    segment = build.tcp(payload, sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, options=options,
                        src=src, dst=dst)
    return build.ethernet(build.ipv4(segment, src=src, dst=dst, proto=6, ident=ident))


def udp_frame(payload, src=CLIENT, dst=SERVER, sport=5353, dport=53) -> bytes:
    return build.ethernet(build.ipv4(build.udp(payload, sport=sport, dport=dport, src=src, dst=dst),
                                     src=src, dst=dst, proto=17))


def tcp_session(client=CLIENT, server=SERVER, sport=40000, dport=443, isn_c=1000, isn_s=5000, t0=0.0,
                requests=(b"GET / HTTP/1.1\r\n\r\n",), responses=(b"HTTP/1.1 200 OK\r\n\r\nhello",),
                ident=1, close=True):
    """(ts, frame) pairs of a whole TCP conversation: handshake, request/response pairs, FIN."""
    c = dict(src=client, dst=server, sport=sport, dport=dport, ident=ident)
    s = dict(src=server, dst=client, sport=dport, dport=sport, ident=ident)
    t = t0
    frames = [(t, tcp_frame(seq=isn_c, flags="S", **c)),
              (t + 0.01, tcp_frame(seq=isn_s, ack=isn_c + 1, flags="SA", **s)),
              (t + 0.02, tcp_frame(seq=isn_c + 1, ack=isn_s + 1, flags="A", **c))]
    cs, ss = isn_c + 1, isn_s + 1
    t += 0.03
    for req, resp in zip(requests, responses):
        frames.append((t, tcp_frame(req, seq=cs, ack=ss, flags="PA", **c)))
        cs += len(req)
        frames.append((t + 0.01, tcp_frame(resp, seq=ss, ack=cs, flags="PA", **s)))
        ss += len(resp)
        frames.append((t + 0.02, tcp_frame(seq=cs, ack=ss, flags="A", **c)))
        t += 0.05
    if close:
        frames.append((t, tcp_frame(seq=cs, ack=ss, flags="FA", **c)))
        frames.append((t + 0.01, tcp_frame(seq=ss, ack=cs + 1, flags="FA", **s)))
    return frames


def write_pcap(path: Path, frames, linktype: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with PcapWriter(path, linktype=linktype) as writer:
        for ts, frame in sorted(frames, key=lambda item: item[0]):
            writer.write(frame, ts)
    return path


def inflating_pcap_gz(mib: int, frame: bytes | None = None) -> bytes:
    """A gzip pcap of one small frame repeated, `mib` MiB once inflated, a few hundred times
    smaller on the wire: the decompression bomb of the serve tests and benchmark."""
    import gzip
    import struct

    frame = frame or udp_frame(b"x" * 8)
    record = struct.pack("<IIII", 1_700_000_000, 0, len(frame), len(frame)) + frame
    block = record * ((1 << 20) // len(record))
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    # gzip members concatenate: one compressed block repeated inflates to the blocks in sequence
    return gzip.compress(header + block, 9, mtime=0) + gzip.compress(block, 9, mtime=0) * (mib - 1)
