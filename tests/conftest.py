"""Shared test settings: the real captures in ../shared/data, used where present."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_REASON = f"{SHARED} absent: the real captures of ../shared/data are needed for this test"


def pytest_collection_modifyitems(config, items):
    """Tests marked `shared_data` skip, with the reason, on a checkout without the data."""
    if SHARED.is_dir():
        return
    skip = pytest.mark.skip(reason=SHARED_REASON)
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The root of ../shared/data (the test skips when it is absent)."""
    if not SHARED.is_dir():
        pytest.skip(SHARED_REASON)
    return SHARED


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """The ONNX export cache of this test run, not the user's: every run starts cold, and nothing
    a test exports outlives it. Subprocesses inherit it through the environment."""
    import os

    saved = os.environ.get("TRAFFICLENS_CACHE")
    os.environ["TRAFFICLENS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if saved is None:
        os.environ.pop("TRAFFICLENS_CACHE", None)
    else:
        os.environ["TRAFFICLENS_CACHE"] = saved
