"""Golden results on real captures: exact session counts, drop counts by reason and a digest of
every tensor and table column, for every mask and layer, on both prep engines (see golden_set.py).

A difference names the setting, the capture and the tensor or column. When the change is
intended, regenerate and review: `python tests/golden/regenerate.py` (README, "Test").
"""

from __future__ import annotations

import json

import pytest

from golden_set import COMBOS, GOLDEN, capture_hashes, compute, differences, load
from trafficlens.prep.engines import numba_available

pytestmark = pytest.mark.shared_data
BACKENDS = ["python", pytest.param("numba", marks=pytest.mark.skipif(not numba_available(), reason="numba not installed"))]


@pytest.fixture(scope="module")
def work(shared_data, tmp_path_factory):
    """A scratch folder, once the golden captures are known to be the ones the results were made from."""
    expected = json.loads((GOLDEN / "captures.json").read_text())
    changed = differences(expected, capture_hashes(shared_data), "captures")
    assert not changed, "the golden captures in ../shared/data changed (not the code): " + "; ".join(changed)
    return tmp_path_factory.mktemp("golden")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("combo", list(COMBOS))
def test_prep_gives_the_golden_results(shared_data, work, combo, backend):
    lines = differences(load(combo), compute(shared_data, work, combo, backend), combo)
    assert not lines, (f"{len(lines)} differences from tests/golden/{combo}.json ({backend} engine); if intended, "
                       "run `python tests/golden/regenerate.py` and review:\n" + "\n".join(lines[:40]))


def test_the_golden_set_reaches_what_it_is_meant_to(shared_data):
    """The set exercises what the golden files are there to pin: several formats and link
    layers, IPv6, TLS and QUIC values under the strict mask, duplicates with conflicting labels,
    retransmissions, damaged files, and every drop reason of the filtered setting."""
    strict, paper = load("strict-all"), load("paper-all")
    assert {fmt for fmt, _ in strict["inputs"].values()} == {"pcap", "pcapng"}
    assert strict["duplicates"]["conflicting_labels"] >= 1 and strict["dropped"]["retransmission_packets"] > 0
    assert strict["unmasked"] == {"quic_short_dcid": 1} and len(strict["errors"]) == 3
    assert set(load("strict-all-flow-filtered")["dropped"]) >= {"empty_sessions", "min_packets", "min_bytes",
                                                                 "duplicate_sessions", "retransmission_packets"}
    # the strict mask changes the tensors of TLS and QUIC captures that the paper mask leaves
    for name in ("ndpi/pcap/tls_ech.pcapng", "ndpi/pcap/quic-v2.pcapng", "ndpi/pcap/lru_ipv6_caches.pcapng"):
        assert strict["sessions"][name]["image"] != paper["sessions"][name]["image"], name
