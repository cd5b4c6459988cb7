"""Result tables as Markdown, CSV and HTML cells: one formatting for compare, cv, audit and reports."""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Sequence

import numpy as np

TEXT_KEYS = ("model", "kind", "features", "setting", "title", "split", "mask")


def cell(value: Any, key: str) -> str:
    """One value as a table cell: counts with separators, seconds to 0.1, scores to 4 places,
    {"mean", "std"} as `mean ± std`."""
    if value is None:
        return "-"
    if isinstance(value, dict) and "mean" in value:
        if key.endswith("seconds") and value["mean"] >= 1:
            return f"{value['mean']:.1f} ± {value['std']:.1f}"
        return f"{cell(value['mean'], key)} ± {cell(value['std'], key)}"
    if key in ("parameters", "n", "n_fit", "n_select", "n_test", "seed", "fold", "repeat", "seeds"):
        return f"{int(value):,}" if isinstance(value, (int, float, np.integer, np.floating)) else str(value)
    if isinstance(value, (float, np.floating)) and (key.endswith("seconds") or key == "seconds_per_epoch"):
        return f"{value:.1f}" if value >= 1 else f"{value:.3f}"
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof 1; 0 for one value), min, max and count."""
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if not len(a):
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "n": int(len(a))}


def markdown_table(rows: list[dict[str, Any]], keys: Sequence[str], bold_best: str | None = "macro_f1") -> str:
    """A Markdown table of `rows` (dicts) over `keys`; the best `bold_best` value is bold."""
    def score(r):
        v = r.get(bold_best) if bold_best else None
        return v["mean"] if isinstance(v, dict) else v

    values = [score(r) for r in rows if score(r) is not None]
    best = max(values) if values else None
    lines = ["| " + " | ".join(keys) + " |",
             "|" + "|".join("---" if k in TEXT_KEYS else "---:" for k in keys) + "|"]
    for r in rows:
        cells = [cell(r.get(k), k) for k in keys]
        if best is not None and bold_best in keys and score(r) == best:
            i = list(keys).index(bold_best)
            cells[i] = f"**{cells[i]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict[str, Any]], keys: Sequence[str]) -> str:
    """CSV of `rows` over `keys` (extra keys ignored, {"mean", "std"} cells as two columns)."""
    flat_keys: list[str] = []
    for k in keys:
        if any(isinstance(r.get(k), dict) for r in rows):
            flat_keys += [f"{k}_mean", f"{k}_std"]
        else:
            flat_keys.append(k)
    buffer = io.StringIO()
    w = csv.DictWriter(buffer, fieldnames=flat_keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        flat = {}
        for k in keys:
            v = r.get(k)
            if isinstance(v, dict):
                flat[f"{k}_mean"], flat[f"{k}_std"] = v.get("mean"), v.get("std")
            else:
                flat[k] = v
        w.writerow(flat)
    return buffer.getvalue()
