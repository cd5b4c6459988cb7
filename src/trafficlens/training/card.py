"""Model cards: `README.md` in every run directory, generated from the bundle's own files.

    write_card("runs/cnn")            # config.json + metrics.json (+ history.json, split.npy)
    write_card("runs/cnn", ds=ds)     # with the dataset: sessions per class on every side

Everything on the card is read from what the run recorded, never typed by hand: data (dataset,
captures, classes, sessions per class, prep settings), protocol (split, mask, seed, n_fit and
n_select), test metrics beside chance level, and known limits found in the numbers themselves
(classes scored on a single capture, the most confused pairs, small test sets).

The card is written before a run could be signed, so `trafficlens sign` covers it like any
other file of the bundle; regenerating it on a signed run breaks the signature (`card` refuses
unless told to, and says to sign again).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from trafficlens.errors import BundleError

CARD = "README.md"
SIDES = ("train", "val", "test")
_SIDE_NAMES = {"train": "train", "val": "validation", "test": "test"}
# Prep settings worth a reader's eye, in this order (the full set is in config.json).
_PREP_KEYS = ("unit", "layer", "mask", "mask_version", "image_bytes", "packets", "packet_bytes", "sequence_length",
              "idle_timeout", "min_packets", "min_bytes", "labels", "label_column", "unlabeled", "max_per_class",
              "deduplicate")


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable ({exc})") from None
    return value if isinstance(value, dict) else None


def sessions_per_class(run: str | os.PathLike, labels: list[str], ds=None) -> dict[str, dict[str, int]] | None:
    """{class: {train, val, test: sessions}} from `split.npy` and the dataset's labels; None when
    the dataset is not at hand (or is not the one the run was trained on)."""
    from trafficlens.training.bundle import read_split

    run = Path(run)
    if ds is None:
        config = _read_json(run / "config.json") or {}
        path = (config.get("dataset") or {}).get("path")
        if not path or not Path(path).is_dir():
            return None
        from trafficlens.datasets import Dataset
        from trafficlens.errors import TrafficlensError

        try:
            ds = Dataset.open(path)
        except TrafficlensError:
            return None
    try:
        assignment = read_split(run, len(ds))
    except BundleError:
        return None
    names = ds.labels.astype(str)
    out = {}
    for label in labels:
        mine = names == label
        out[label] = {side: int(((assignment == code) & mine).sum()) for code, side in enumerate(SIDES)}
    return out


def confused_pairs(confusion: dict[str, Any], top: int = 3) -> list[tuple[str, str, int, int]]:
    """The `top` largest off-diagonal cells of a confusion matrix: (true, predicted, count, true's support)."""
    labels = confusion.get("labels") or []
    matrix = np.asarray(confusion.get("matrix") or [], dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape != (len(labels), len(labels)):
        return []
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    return [(labels[i], labels[j], int(off[i, j]), int(matrix[i].sum()))
            for i, j in (np.unravel_index(k, off.shape) for k in order) if off[i, j] > 0]


def chance(metrics: dict[str, Any], n_classes: int) -> dict[str, float]:
    """Chance levels of the test side: the best constant guess (every session called the most
    common test class) and a uniform guess over the classes."""
    support = [v.get("support", 0) for v in (metrics.get("per_class") or {}).values()]
    n = metrics.get("n") or sum(support)
    return {"majority": max(support) / n if n and support else float("nan"), "uniform": 1 / n_classes}


def interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion `p` of `n` sessions (unlike p +- 1.96 sd it is not
    empty at 0 or 1). Sessions of one capture are not independent, so read it as a floor."""
    if not n:
        return float("nan"), float("nan")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _spread(p: float, n: int) -> float:
    """The larger distance from `p` to its interval's ends."""
    lo, hi = interval(p, n)
    return max(p - lo, hi - p)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def model_card(run: str | os.PathLike, ds=None) -> str:
    """The Markdown model card of a run directory (see module docstring)."""
    from trafficlens.training.bundle import bundle_kind, read_config

    run = Path(run)
    config = read_config(run)
    metrics = _read_json(run / "metrics.json") or {}
    history = _read_json(run / "history.json")
    model, labels = config["model"], [str(x) for x in config["labels"]]
    prep, train = config.get("preprocessing") or {}, config.get("train") or {}
    split = config.get("split") or {}
    lines = [f"# Model card: {model.get('name')} ({bundle_kind(config)})", "",
             f"Generated by trafficlens {config.get('trafficlens_version')} from this run's `config.json`, "
             f"`metrics.json`{', `history.json`' if history else ''} and `split.npy`; created {config.get('created')}. "
             f"Regenerate with `trafficlens card {run}`.", ""]
    lines += _data_section(run, config, metrics, labels, ds)
    lines += _protocol_section(split, prep, train, metrics, history)
    lines += _metrics_section(metrics, labels)
    lines += ["## Intended use", "",
              f"Labels sessions of captures prepared with the settings above (layer {prep.get('layer')}, mask "
              f"{prep.get('mask')}) as one of its {len(labels)} classes: `trafficlens predict {run} CAPTURE`. It has no "
              "'none of these' answer: traffic of any other application still gets one of these labels, so score it on "
              "your own captures (`trafficlens evaluate RUN --on DATASET`) before relying on it.", ""]
    lines += ["## Known limits", ""]
    lines += [f"- {item}" for item in known_limits(metrics, split, prep, labels)]
    lines.append("")
    return "\n".join(lines)


def _data_section(run: Path, config: dict[str, Any], metrics: dict[str, Any], labels: list[str], ds) -> list[str]:
    prep, split, dataset = config.get("preprocessing") or {}, config.get("split") or {}, config.get("dataset") or {}
    counts = sessions_per_class(run, labels, ds)
    lines = ["## Data", "",
             f"- Dataset: `{dataset.get('path')}` ({dataset.get('n_sessions')} sessions, created {dataset.get('created')})"]
    captures = split.get("captures") or {}
    if captures:
        lines.append("- Captures: " + ", ".join(f"{captures.get(s, 0)} {_SIDE_NAMES[s]}" for s in SIDES)
                     + f" ({sum(captures.get(s, 0) for s in SIDES)} in all)")
    lines.append(f"- Classes ({len(labels)}): " + ", ".join(labels))
    if split.get("dropped_classes"):
        lines.append("- Dropped by the class options: " + ", ".join(f"{k} ({v} sessions)"
                                                                      for k, v in split["dropped_classes"].items()))
    lines.append("- Prep settings: " + ", ".join(f"{k} {prep[k]}" for k in _PREP_KEYS if k in prep and prep[k] is not None))
    lines.append("")
    per_class = metrics.get("per_class") or {}
    if counts:
        lines += ["| class | train | validation | test |", "|---|---:|---:|---:|"]
        lines += [f"| {c} | {v['train']} | {v['val']} | {v['test']} |" for c, v in counts.items()]
        lines += [f"| all | {sum(v['train'] for v in counts.values())} | {sum(v['val'] for v in counts.values())} | "
                  f"{sum(v['test'] for v in counts.values())} |", ""]
        small = [c for c, v in counts.items() if v["train"] < 30]
        if small:  # here, not under Known limits: that section must not depend on the dataset being at hand
            lines += [f"Fewer than 30 training sessions: {', '.join(small)}.", ""]
    elif per_class:
        lines += ["Sessions per class on the test side (the dataset was not at hand for the other sides; "
                  f"sizes: {split.get('sizes')}): " + ", ".join(f"{c} {v.get('support')}" for c, v in per_class.items()), ""]
    return lines


def _protocol_section(split: dict[str, Any], prep: dict[str, Any], train: dict[str, Any], metrics: dict[str, Any],
                      history: dict[str, Any] | None) -> list[str]:
    lines = ["## Protocol", "",
             f"- Split: {split.get('kind', train.get('split'))}, seed {split.get('seed', train.get('seed'))}; "
             f"sizes {split.get('sizes')}",
             f"- Mask: {prep.get('mask')} (mask_version {prep.get('mask_version', 1)}), layer {prep.get('layer')}"
             + (f", unit {prep['unit']}" if prep.get("unit") else ""),
             f"- n_fit {metrics.get('n_fit', split.get('train_after_balance'))} (training rows after balance "
             f"{train.get('balance', 'none')}), n_select {metrics.get('n_select')} ({metrics.get('selection', 'validation')})"]
    if history:
        lines.append(f"- Training: best epoch {history.get('best_epoch')} of {len(history.get('epochs') or [])} "
                     f"({history.get('stopped')}); batch size {train.get('batch_size')}, lr {train.get('lr')}, "
                     f"loss {train.get('loss')}")
    if metrics.get("protocol"):
        lines.append(f"- {metrics['protocol'][0].upper()}{metrics['protocol'][1:]}.")
    if train.get("train_fraction", 1.0) < 1:
        lines.append(f"- Learned from {train['train_fraction']:.0%} of the training side (--train-fraction).")
    pre = metrics.get("pretraining")
    if pre:
        lines.append(f"- Started from the pre-trained encoder {Path(pre['encoder']).name} (sha256 {pre['sha256'][:12]}, "
                     f"{pre['loaded']} of {pre['of']} tensors{', frozen' if train.get('freeze_init') else ''}); "
                     f"pre-training read {pre['test_captures_read']} of the {pre['test_captures']} test captures"
                     + (" — **the test score is not independent of pre-training**" if pre["test_captures_read"] else ""))
    lines.append("")
    return lines


def _metrics_section(metrics: dict[str, Any], labels: list[str]) -> list[str]:
    lines = ["## Test metrics", ""]
    n = int(metrics.get("n") or 0)
    if "accuracy" not in metrics or not n:
        return lines + [metrics.get("no_test_score") or "No test score (no test sessions in this split).", ""]
    ch = chance(metrics, len(labels))
    acc = metrics["accuracy"]
    lines += [f"{n} test sessions. Chance level: {ch['majority']:.3f} (every session called the most common test "
              f"class), {ch['uniform']:.3f} (1/{len(labels)} classes).", "",
              "| metric | value | 95% interval (sessions independent) |", "|---|---:|---:|",
              "| accuracy | {:.3f} | {:.3f} - {:.3f} |".format(acc, *interval(acc, n)),
              f"| macro-F1 | {metrics.get('macro_f1', float('nan')):.3f} | |",
              f"| weighted-F1 | {metrics.get('weighted_f1', float('nan')):.3f} | |",
              f"| majority-class accuracy | {ch['majority']:.3f} | |", "",
              "| class | precision | recall | F1 | test sessions |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
              for c, v in (metrics.get("per_class") or {}).items()]
    lines.append("")
    return lines


def known_limits(metrics: dict[str, Any], split: dict[str, Any], prep: dict[str, Any], labels: list[str]) -> list[str]:
    """The limits that this run's own numbers show."""
    out = []
    n = int(metrics.get("n") or 0)
    if n and "accuracy" in metrics:
        out.append(f"{n} test sessions: the accuracy is uncertain by about +-{_spread(metrics['accuracy'], n):.2f} "
                   "even if sessions were independent; sessions of one capture are not, so more.")
    single = (split.get("coverage") or {}).get("single_test_capture") or []
    if single:
        out.append(f"{len(single)} of {len(labels)} classes have a single test capture, so their score is that "
                   f"capture's: {', '.join(single)}.")
    for side, absent in (split.get("missing") or {}).items():
        if absent:
            out.append(f"No {_SIDE_NAMES.get(side, side)} sessions for: {', '.join(absent)}.")
    for true, predicted, count, support in confused_pairs(metrics.get("confusion_matrix") or {}):
        out.append(f"{true} is confused with {predicted}: {count} of {support} test sessions of {true} were "
                   f"labelled {predicted}.")
    if split.get("kind") in ("random", "packet-leak"):
        out.append(f"{split['kind']} split: sessions of one capture sit on both sides, so the test score overstates "
                   "what new captures get (train with --split capture for an honest figure).")
    if prep.get("mask") == "none":
        out.append("Mask none: addresses and ports are visible to the model, which can learn the lab's hosts "
                   "instead of the application.")
    for warning in metrics.get("warnings") or []:
        out.append(f"Training warned: {warning}")
    return out or ["None found in the recorded numbers."]


def write_card(run: str | os.PathLike, ds=None) -> Path:
    """Write `run/README.md` (atomically) and return its path."""
    from trafficlens.files import atomic_write_text

    path = Path(run) / CARD
    atomic_write_text(path, model_card(run, ds))
    return path


def card_is_signed(run: str | os.PathLike) -> bool:
    """Whether the run's signature covers its card (rewriting it would break the signature)."""
    signature = _read_json(Path(run) / "signature.json") or {}
    return CARD in (signature.get("files") or {})
