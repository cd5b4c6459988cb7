"""Link-layer header types (tcpdump.org LINKTYPE_* values) that trafficlens decodes."""

NULL = 0  # BSD loopback: 4-byte address family in the writer's byte order
ETHERNET = 1
PPP = 9
RAW_LEGACY_12 = 12  # raw IP on some BSDs
RAW_LEGACY_14 = 14  # raw IP on OpenBSD
PPP_HDLC = 50
RAW = 101  # raw IP, version from the first nibble
C_HDLC = 104  # Cisco HDLC: address, control, then an Ethernet type
LOOP = 108  # OpenBSD loopback: family in network byte order
LINUX_SLL = 113
IPV4 = 228
IPV6 = 229
LINUX_SLL2 = 276

RAW_IP = (RAW_LEGACY_12, RAW_LEGACY_14, RAW, IPV4, IPV6)
