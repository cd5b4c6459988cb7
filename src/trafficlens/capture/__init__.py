"""Capture I/O: reading and writing pcap/pcapng, decoding link -> IP -> TCP/UDP."""

from trafficlens.capture.decode import Packet, decode
from trafficlens.capture.reader import CaptureReader, RawPacket, read_packets
from trafficlens.capture.writer import PcapngWriter, PcapWriter

__all__ = ["CaptureReader", "Packet", "PcapWriter", "PcapngWriter", "RawPacket", "decode", "read_packets"]
