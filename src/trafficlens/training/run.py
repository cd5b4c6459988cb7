"""One training run, dataset directory in, model bundle out (what `trafficlens train` does).

    from trafficlens.training import TrainConfig, train_run
    summary = train_run("ds/iot", "runs/cnn", "chen-cnn", TrainConfig(split="capture"))
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from trafficlens.errors import ConfigError
from trafficlens.training.config import TrainConfig


def make_split(ds, rows: np.ndarray, y: np.ndarray, cfg: TrainConfig):
    """The split `cfg.split` names, then identical tensors removed from the later side (not for packet-leak)."""
    from trafficlens.training.splits import (capture_split, column_split, deduplicate, none_split, random_split,
                                             tensor_keys, time_split)

    if cfg.split == "none":
        split = none_split(rows, y, cfg.seed)
    elif cfg.split in ("random", "packet-leak"):
        split = random_split(rows, y, cfg.seed)
        split.kind = cfg.split
    elif cfg.split == "capture":
        split = capture_split(rows, y, ds.column("capture")[rows].astype(str), cfg.seed)
    elif cfg.split == "time":
        split = time_split(rows, y, ds.column("start_time")[rows])
    else:
        split = column_split(rows, y, ds.column("split")[rows])
    return deduplicate(split, rows, y, tensor_keys(ds, rows), remove=cfg.split != "packet-leak")


def log_split(split, classes: list[str], log: Callable[[str], None]) -> None:
    """Warn about classes absent from a side and report identical tensors across sides."""
    for side, absent in split.missing.items():
        if side == "test" and split.kind == "none":
            continue
        log(f"warning: {len(absent)} classes have no {side} sessions in this split: {', '.join(classes[i] for i in absent)}")
    from trafficlens.training.splits import coverage_warnings

    for message in coverage_warnings(split, classes):
        log(f"warning: {message}")
    d = split.dedup
    if not d:
        return
    cross = sum(d["cross_side"].values())
    if d["duplicate_rows"] or d["conflict_rows"]:
        log(f"{d['duplicate_rows']} sessions duplicate another's tensors; {d['conflict_groups']} groups of identical "
            f"tensors ({d['conflict_rows']} sessions) carry conflicting labels")
    if cross and sum(d["removed"].values()):
        log(f"removed {cross} validation/test sessions identical to a session on an earlier side")
    elif cross:
        log(f"warning: {cross} validation/test sessions are identical to a training or validation session "
            f"({split.kind} split keeps them: leakage on purpose)")


def model_from_runs(info, from_runs: Sequence[str], ds, num_classes: int, input_shapes: dict,
                    split_assignment: np.ndarray):
    """A model built on top of trained runs (`info.from_runs` names the models it needs, one run
    each): the runs must come from this dataset's settings and this very split, or their test
    sessions would leak into its training."""
    from trafficlens.training.bundle import SPLIT, load_bundle, read_split

    needed = ", ".join(info.from_runs)
    if len(from_runs) != len(info.from_runs):
        raise ConfigError(f"{info.name} needs --from with one trained run of each of {needed}")
    bundles = {}
    for path in from_runs:
        b = load_bundle(path)
        bundles[b.name] = b
        if b.preprocessing != ds.config:
            diff = sorted(k for k in set(b.preprocessing) | set(ds.config) if b.preprocessing.get(k) != ds.config.get(k))
            raise ConfigError(f"{path} was trained on a dataset prepared with other settings ({', '.join(diff)}); use the same dataset")
        if not (Path(path) / SPLIT).is_file() or not np.array_equal(read_split(path), split_assignment):
            raise ConfigError(f"{path} used another train/validation/test split; train the branches with the same "
                              "--split, --seed and --min-class-sessions, or its test sessions leak into training")
    if set(bundles) != set(info.from_runs):
        raise ConfigError(f"{info.name} needs one run of each of {needed}, got {', '.join(sorted(bundles))}")
    branches = {name: (b.model, b.config["model"]["config"]) for name, b in bundles.items()}
    return info.assemble(num_classes, input_shapes, branches)


@dataclass
class Selected:
    """An open dataset's selected classes and one split of their sessions."""

    ds: Any
    classes: list[str]
    rows: np.ndarray  # the selected classes' rows
    label_of: np.ndarray  # class id per dataset row, -1 outside the selection
    dropped: dict[str, int]
    split: Any  # training.splits.Split


def select_and_split(ds, cfg: TrainConfig, split=None, log: Callable[[str], None] = lambda m: None) -> Selected:
    """`cfg`'s classes of `ds` and its split of them (`split`: one made elsewhere, for these rows)."""
    classes, rows, y_rows, dropped = cfg.selection.apply(ds, log)
    if split is None:
        split = make_split(ds, rows, y_rows, cfg)
        log_split(split, classes, log)
    elif not np.isin(np.concatenate([split.train, split.val, split.test]), rows).all():
        raise ConfigError("the given split holds sessions outside the selected classes (check the class options)")
    label_of = np.full(len(ds), -1, dtype=np.int64)
    label_of[rows] = y_rows
    return Selected(ds, classes, rows, label_of, dropped, split)


def train_run(dataset: str | os.PathLike, out_dir: str | os.PathLike, model_name: str, cfg: TrainConfig,
              model_kwargs: dict[str, Any] | None = None, from_runs: Sequence[str] = (), progress: bool = True,
              overwrite: bool = False, log: Callable[[str], None] | None = None, split=None,
              resume: bool = False) -> dict[str, Any]:
    """Train `model_name` on a dataset directory and write the bundle to `out_dir`.

    `split` (a `training.splits.Split` over rows of the selected classes) replaces the one
    `cfg.split` would make: cross-validation folds and comparisons pass theirs (and log it).
    Returns a summary: test accuracy and macro-F1, best epoch, why it stopped, seconds.
    After every epoch the whole training state goes to `out_dir/checkpoint.pt`; `resume`
    continues from it (the same settings give the same split and rows).
    """
    from trafficlens.datasets import Dataset
    from trafficlens.models import create_model, model_info
    from trafficlens.training.bundle import check_output
    from trafficlens.training.splits import fit_rows, labelled_fraction
    from trafficlens.training.torchrun import init as init_distributed
    from trafficlens.training.torchrun import main_process
    from trafficlens.training.trainer import fit

    log = log or (lambda message: print(message, file=sys.stderr))
    state = load_checkpoint(out_dir) if resume else None
    if not resume and main_process():  # one rank probes the directory it will write (ranks probing it together race)
        check_output(out_dir, overwrite)
    info = model_info(model_name, "deep")
    if from_runs and not info.from_runs:
        raise ConfigError(f"--from is for models built on trained runs ({', '.join(_built_on_runs())}), not {model_name}")
    if info.from_runs and not from_runs:
        raise ConfigError(f"{model_name} trains on top of trained runs: pass --from with one run of each of "
                          f"{', '.join(info.from_runs)}")
    dist = init_distributed(cfg)  # one process, or one rank of a torchrun launch
    if not dist.main:
        log = (lambda message: None)
    data = select_and_split(Dataset.open(dataset), cfg, split, log)
    ds, split, label_of = data.ds, data.split, data.label_of
    train_idx = labelled_fraction(fit_rows(split, label_of, cfg.balance, cfg.seed), label_of, cfg.train_fraction, cfg.seed)
    input_shapes = {t: tuple(ds.tensor(t).shape[1:]) for t in info.inputs}
    if info.from_runs:
        model = model_from_runs(info, from_runs, ds, len(data.classes), input_shapes, split.assignment(len(ds)))
    else:
        model = create_model(model_name, len(data.classes), input_shapes, **(model_kwargs or {}))
    init = _start_from_encoder(model, cfg, log)
    tensors = {t: ds.tensor(t) for t in info.inputs}
    log(f"{model_name}: {len(data.classes)} classes, train {len(train_idx)} / val {len(split.val)} / test "
        f"{len(split.test)} sessions ({split.kind} split), device {dist.device}"
        + (f", {dist.world} processes" if dist.enabled else ""))
    board = _tensorboard(Path(out_dir)) if dist.main else None
    try:
        result = fit(model, tensors, train_idx, label_of[train_idx], split.val, label_of[split.val], cfg,
                     len(data.classes), progress=progress, device=dist.device, dist=dist,
                     on_epoch=board and (lambda epoch, row: [board.add_scalar(k, v, epoch) for k, v in row.items()
                                                             if isinstance(v, (int, float)) and not k.startswith("_")]),
                     checkpoint=_checkpointer(Path(out_dir), {"dataset": str(Path(dataset).resolve()), "model": model_name,
                                                              "train": cfg.to_dict(), "model_kwargs": model_kwargs or {},
                                                              "from_runs": [str(p) for p in from_runs]}),
                     resume=state)
    finally:
        if board is not None:
            board.close()
    for message in result.warnings:
        log(f"warning: {message}")
    metrics = _run_metrics(model, tensors, data, train_idx, result, cfg, dist)
    if init:
        metrics["pretraining"] = _pretraining_overlap(init, ds, split.test, log)
    model.cpu()
    if dist.main:  # every rank holds the same weights and metrics; one writes them
        _save_run(Path(out_dir), model, data, cfg, metrics, result, input_shapes, len(train_idx), from_runs)
        if init:
            from trafficlens.files import atomic_write_text
            from trafficlens.training.encoder import PRETRAINING

            atomic_write_text(Path(out_dir) / PRETRAINING, json.dumps(init, indent=1))
    dist.barrier()
    dist.close()
    return {"out": str(out_dir), "model": model_name, "best_epoch": result.best_epoch, "stopped": result.stopped,
            "epochs": len(result.history), "seconds": result.seconds, "val_macro_f1": result.best_val_macro_f1,
            "test_accuracy": metrics.get("accuracy"), "test_macro_f1": metrics.get("macro_f1")}


def _start_from_encoder(model, cfg: TrainConfig, log: Callable[[str], None]) -> dict[str, Any] | None:
    """--init: the encoder's parameters into `model` (on --resume the checkpoint's weights replace
    them afterwards), fixed with --freeze-init; returns what the run records (None without --init)."""
    if not cfg.init:
        return None
    from trafficlens.training.encoder import init_from_encoder

    init = init_from_encoder(model, cfg.init)
    log(f"{model.model_name}: {init['loaded']} of {init['of']} parameter tensors from {cfg.init}"
        + (", frozen" if cfg.freeze_init else ""))
    if cfg.freeze_init:
        loaded = set(init["parameters"])
        for name, parameter in model.named_parameters():
            if name in loaded:
                parameter.requires_grad_(False)
    return init


def _pretraining_overlap(init: dict[str, Any], ds, test: np.ndarray, log: Callable[[str], None]) -> dict[str, Any]:
    from trafficlens.training.encoder import pretraining_record

    record = pretraining_record(init, ds, test)
    if record["test_captures_read"]:
        log(f"warning: pre-training read {record['test_captures_read']} of the {record['test_captures']} test "
            "captures: the test score is not independent of it")
    return record


def _run_metrics(model, tensors, data: Selected, train_idx: np.ndarray, result, cfg: TrainConfig, dist) -> dict[str, Any]:
    """metrics.json of a trained model: test scores, provenance, cost."""
    from trafficlens.models import count_parameters
    from trafficlens.training.metrics import SCHEMA_VERSION, classification_report, provenance, softmax
    from trafficlens.training.trainer import predict_logits

    split = data.split
    metrics: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "model": model.model_name, "kind": "deep",
                               "features": "+".join(model.inputs)}
    t0 = time.perf_counter()
    if len(split.test):
        logits = predict_logits(model, tensors, split.test, cfg.eval_batch_size, dist.device, cfg.amp, dist)
        metrics.update(classification_report(data.label_of[split.test], softmax(logits), data.classes))
    elif split.kind == "none":
        metrics["no_test_score"] = ("trained with --split none (a deployment model: every session but a 10% "
                                    "early-stopping slice trains); score it with `trafficlens evaluate RUN --on DATASET`")
    inference_seconds = time.perf_counter() - t0
    metrics.update(provenance(data.ds, split, classes=data.classes, seed=cfg.seed, selection=cfg.selection,
                              dropped=data.dropped))
    epochs = result.history
    metrics.update({
        "parameters": count_parameters(model), "train_seconds": result.seconds, "epochs": len(epochs),
        "seconds_per_epoch": float(np.mean([e["train_seconds"] for e in epochs])) if epochs else None,
        "inference_seconds": inference_seconds,
        "inference_sessions_per_s": len(split.test) / inference_seconds if len(split.test) and inference_seconds > 0 else None,
        "device": str(dist.device), "balance": cfg.balance, "train_rows": int(len(train_idx)),
        "n_fit": int(len(train_idx)), "n_select": int(len(split.val)),
        "selection": "early stopping on validation macro-F1", "processes": dist.world,
        "warnings": result.warnings,
    })
    return metrics


def _save_run(out: Path, model, data: Selected, cfg: TrainConfig, metrics: dict[str, Any], result, input_shapes,
              n_fit: int, from_runs: Sequence[str]) -> None:
    from trafficlens.training.bundle import SPLIT, save_bundle

    ds = data.ds
    history = {"epochs": result.history, "best_epoch": result.best_epoch, "best_val_macro_f1": result.best_val_macro_f1,
               "stopped": result.stopped, "seconds": result.seconds}
    split_info = {**metrics["split_info"], "train_after_balance": n_fit, "file": SPLIT}
    dataset_info = {"path": str(Path(ds.path).resolve()), "n_sessions": len(ds), "created": ds.manifest.get("created"),
                    "format_version": ds.manifest.get("format_version"),
                    "input_shapes": {k: list(v) for k, v in input_shapes.items()}}
    save_bundle(out, model, labels=data.classes, preprocessing=ds.config, train=cfg.to_dict(), split=split_info,
                dataset=dataset_info, history=history, metrics=metrics,
                extra={"from": [str(p) for p in from_runs]} if from_runs else None)
    np.save(out / SPLIT, data.split.assignment(len(ds)), allow_pickle=False)
    write_history_csv(out / HISTORY_CSV, result.history)
    from trafficlens.training.card import write_card

    write_card(out, ds)  # last: it reads the files above


HISTORY_CSV = "history.csv"
# Keys of a model's config that the dataset's tensor shapes decide (`models.registry.shape_kwargs`)
# and the class count: a replay takes them from the dataset it trains on.
DATA_SETTINGS = {"num_classes", "image_side", "image_bytes", "packets", "packet_bytes", "sequence_length", "stats_features"}


CHECKPOINT = "checkpoint.pt"


def _checkpointer(out: Path, settings: dict[str, Any]) -> Callable[[dict], None]:
    """Writes a training state (`trainer._Epochs.state`) to out/checkpoint.pt atomically, with
    the settings that resume it; history and settings as JSON text, so the file holds only
    tensors and plain values (read back with torch.load(weights_only=True))."""
    import json

    import torch

    from trafficlens.training.bundle import _json_default

    def save(state: dict) -> None:
        out.mkdir(parents=True, exist_ok=True)
        state = {**state, "history": json.dumps(state["history"], default=_json_default),
                 "best_f1": float(state["best_f1"]), "settings": json.dumps(settings, default=_json_default)}
        tmp = out / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, out / CHECKPOINT)

    return save


def load_checkpoint(run: str | os.PathLike) -> dict[str, Any]:
    """A run's checkpoint.pt (ConfigError when it has none or it is unreadable)."""
    import json
    import pickle

    import torch

    path = Path(run) / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"{run}: no {CHECKPOINT} to resume from (runs save one after every epoch)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state["history"], state["settings"] = json.loads(state["history"]), json.loads(state["settings"])
    except (OSError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        raise ConfigError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0][:120]})") from None
    return state


def _tensorboard(out: Path):
    """A TensorBoard writer into RUN/tensorboard when tensorboard is installed (optional: None otherwise)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def write_history_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """history.json's epochs as CSV, one row per epoch (for a spreadsheet or pandas)."""
    import csv
    import io

    columns = ["epoch"] + sorted({k for row in history for k in row if not k.startswith("_") and k != "epoch"})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore")
    writer.writeheader()
    for i, row in enumerate(history, 1):
        writer.writerow({"epoch": i, **{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}})
    from trafficlens.files import atomic_write_text

    atomic_write_text(path, buf.getvalue())


@dataclass
class Replay:
    """What a run's config.json says to train again (`train --config`)."""

    dataset: str
    model: str
    train: dict[str, Any]  # TrainConfig settings
    model_kwargs: dict[str, Any]
    from_runs: list[str]


def replay(path: str | os.PathLike) -> Replay:
    """The settings of the run at `path` (its directory or its config.json), to train it again."""
    from trafficlens.models.registry import saved_config
    from trafficlens.training.bundle import CONFIG, bundle_kind, read_config

    path = Path(path)
    run = path.parent if path.name == CONFIG and path.is_file() else path
    config = read_config(run)
    if bundle_kind(config) != "deep":
        raise ConfigError(f"{run}: a {bundle_kind(config)} bundle; replay it with `trafficlens baseline`")
    model = config["model"]
    kwargs = {k: v for k, v in saved_config(model.get("name"), model.get("config") or {}).items() if k not in DATA_SETTINGS}
    return Replay(dataset=str((config.get("dataset") or {}).get("path") or ""), model=str(model.get("name")),
                  train=dict(config.get("train") or {}), model_kwargs=kwargs,
                  from_runs=[str(p) for p in config.get("from") or []])


def _built_on_runs() -> list[str]:
    from trafficlens.models import list_models, model_info

    return [name for name in list_models("deep") if model_info(name).from_runs]
