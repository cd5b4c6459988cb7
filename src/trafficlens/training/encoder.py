"""The encoder file of `trafficlens pretrain` and what a run started from it records.

An encoder is a safetensors file of tl-fusion's encoder parameters (`ENCODER_PREFIXES`), with
the model settings, the datasets and captures read (by SHA-256) and the loss curve in its
metadata. `train --init` loads it (`init_from_encoder`) and stores the record in the run as
`pretraining.json`; `metrics.json` and `evaluate` count the scored captures it read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from trafficlens.errors import ConfigError

FORMAT = "trafficlens-encoder"
FORMAT_VERSION = 1
PRETRAINING = "pretraining.json"  # in a run initialised from an encoder: the record of init_from_encoder


def _digest_by_path(ds) -> dict[str, str | None]:
    """Each input capture's SHA-256, by its path as the dataset's `capture` column names it."""
    return {i["path"]: i.get("sha256") for i in ds.manifest.get("inputs", [])}


def capture_digests(ds, rows: np.ndarray | None = None) -> set[str]:
    """SHA-256 of the captures that `rows` of `ds` (all rows by default) came from, from its manifest."""
    by_path = _digest_by_path(ds)
    names = ds.column("capture") if rows is None else ds.column("capture")[rows]
    return {by_path[str(n)] for n in np.unique(names) if by_path.get(str(n))}


def save_encoder(out: Path, model, meta: dict[str, Any]) -> None:
    from safetensors.torch import save

    from trafficlens.files import atomic_output
    from trafficlens.models.tl_fusion import ENCODER_PREFIXES

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out, "wb") as fh:
        fh.write(save(state, metadata={"trafficlens": json.dumps(meta)}))

def read_encoder(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, metadata) of an encoder file; a file that is not one is a one-line error."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such encoder file (make one with `trafficlens pretrain`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("trafficlens", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, SafetensorError) as e:
        raise ConfigError(f"{path}: not an encoder file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a trafficlens encoder (no {FORMAT} metadata)")
    return tensors, meta


def init_from_encoder(model, path: str | os.PathLike) -> dict[str, Any]:
    """Loads the encoder's parameters into `model` wherever a name and shape match; a model that
    takes none of them is an error (pre-training would silently not happen). Returns what to
    record in the run: the file, its SHA-256, what was loaded and the captures it read."""
    from trafficlens.files import sha256_file
    from trafficlens.models.ensemble import member_key

    tensors, meta = read_encoder(path)
    own = model.state_dict()
    # every member of an ensemble (`members.N.` + the encoder's name) starts from the same encoder
    source = {k: member_key(k) for k in own}
    fits = {k: tensors[source[k]] for k, v in own.items()
            if source[k] in tensors and tuple(v.shape) == tuple(tensors[source[k]].shape)}
    if not fits:
        raise ConfigError(f"{path}: none of its {len(tensors)} parameters fits {model.model_name} "
                          f"(pre-trained {meta.get('model')} with {meta.get('model_settings', {}).get('dim')}-wide tokens); "
                          "pre-train with the same model settings")
    model.load_state_dict(fits, strict=False)
    return {"encoder": str(Path(path).resolve()), "sha256": sha256_file(path), "parameters": sorted(fits),
            "loaded": len({source[k] for k in fits}), "of": len(tensors),
            "skipped": sorted(set(tensors) - {source[k] for k in fits}), "captures": meta.get("captures", []),
            "datasets": [d["path"] for d in meta.get("datasets", [])], "holdout": meta.get("holdout")}


def pretraining_record(init: dict[str, Any], ds, test_rows: np.ndarray) -> dict[str, Any]:
    """What metrics.json says about a run's pre-training: the encoder, what it read, and how many of
    the test captures it read (0 is the only honest value)."""
    record = {k: init.get(k) for k in ("encoder", "sha256", "loaded", "of", "datasets", "holdout")}
    return record | overlap_with_test(init, ds, test_rows)


def overlap_with_test(init: dict[str, Any], ds, test_rows: np.ndarray) -> dict[str, Any]:
    """How many test captures (and sessions) of `ds` pre-training read, by capture SHA-256."""
    seen = set(init.get("captures", []))
    by_path = _digest_by_path(ds)
    names = ds.column("capture")[test_rows]
    hit = np.array([by_path.get(str(n)) in seen for n in names], dtype=bool) if len(names) else np.zeros(0, bool)
    return {"test_captures_read": len({str(n) for n, h in zip(names, hit) if h}),
            "test_captures": len(set(map(str, names))), "test_sessions_read": int(hit.sum())}
