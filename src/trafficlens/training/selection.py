"""Which classes take part in a run: the same rule for train, baseline, compare, cv and audit.

    sel = ClassSelection(min_sessions=50, exclude=("Unknown",))
    classes, rows, y, dropped = sel.apply(ds, log)

A class is kept when it has >= `min_sessions` labelled sessions, is seen in >= `min_captures`
capture files (a class found in one file cannot be split by capture honestly: it lands on one
side only), is named in `include` (when given) and not in `exclude`. Names in `include` or
`exclude` that the dataset does not have are an error listing the closest labels it does have:
a typo must not silently train on every class.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from trafficlens.errors import ConfigError


def expand_class_names(values: Iterable[str], option: str = "--include-class") -> tuple[str, ...]:
    """Labels as given on the command line: `@FILE` reads one label per line (# comments, blanks skipped)."""
    out: list[str] = []
    for value in values:
        if value.startswith("@"):
            path = Path(value[1:])
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{option} {value}: cannot read {path} ({exc.__class__.__name__}: {exc})") from None
            out += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        else:
            out.append(value)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class ClassSelection:
    min_sessions: int = 0
    min_captures: int = 0
    include: tuple[str, ...] = ()  # only these labels (empty: every label)
    exclude: tuple[str, ...] = ()  # never these labels (e.g. nDPI's "Unknown")

    def __post_init__(self) -> None:
        if self.min_sessions < 0 or self.min_captures < 0:
            raise ConfigError(f"min_class_sessions and min_class_captures must be >= 0, got "
                              f"{self.min_sessions} and {self.min_captures}")
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        both = sorted(set(self.include) & set(self.exclude))
        if both:
            raise ConfigError(f"{', '.join(both)}: both included and excluded; name each class in one of "
                              "--include-class and --exclude-class")

    def as_dict(self) -> dict[str, Any]:
        """The keys metrics.json and config.json have always used."""
        return {"min_class_sessions": self.min_sessions, "min_class_captures": self.min_captures,
                "include_classes": list(self.include), "exclude_classes": list(self.exclude)}

    @classmethod
    def from_config(cls, cfg: Any) -> "ClassSelection":
        """From any config with the flat fields (TrainConfig, CompareConfig, AuditConfig, a dict)."""
        get = cfg.get if isinstance(cfg, dict) else (lambda key, default=None: getattr(cfg, key, default))
        return cls(get("min_class_sessions", 0) or 0, get("min_class_captures", 0) or 0,
                   tuple(get("include_classes", ()) or ()), tuple(get("exclude_classes", ()) or ()))

    def check_names(self, labels: Iterable[str]) -> None:
        known = sorted({str(x) for x in labels})
        for option, names in (("--include-class", self.include), ("--exclude-class", self.exclude)):
            for name in names:
                if name not in known:
                    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
                    hint = f"; did you mean {', '.join(close)}?" if close else f"; the dataset's labels: {_listing(known)}"
                    raise ConfigError(f"{option} {name!r}: no such class in the dataset{hint}")

    def select(self, labels: np.ndarray, captures: np.ndarray | None = None
               ) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, int]]:
        """Labelled rows of the classes kept: (classes, rows, class ids, dropped classes with their sessions)."""
        labelled = np.array([x is not None for x in labels], dtype=bool)
        names, counts = np.unique(labels[labelled].astype(str), return_counts=True)
        self.check_names(names)
        keep = counts >= max(self.min_sessions, 1)
        if self.include:
            keep &= np.isin(names, list(self.include))
        if self.exclude:
            keep &= ~np.isin(names, list(self.exclude))
        if self.min_captures > 1:
            if captures is None:
                raise ConfigError("min_class_captures needs the capture of every row")
            files: dict[str, int] = {}
            for name, _ in {(str(a), str(b)) for a, b in zip(labels[labelled], captures[labelled])}:
                files[name] = files.get(name, 0) + 1
            keep &= np.array([files[str(n)] >= self.min_captures for n in names], dtype=bool)
        classes = [str(n) for n in names[keep]]
        dropped = {str(n): int(c) for n, c in zip(names[~keep], counts[~keep])}
        if len(classes) < 2:
            raise ConfigError(f"need at least 2 classes with >= {self.min_sessions} sessions"
                              + (f" in >= {self.min_captures} captures" if self.min_captures > 1 else "")
                              + (" among --include-class" if self.include else "")
                              + f", found {len(classes)}; lower --min-class-sessions or --min-class-captures")
        index = {c: i for i, c in enumerate(classes)}
        rows = np.flatnonzero(labelled)
        ids = np.array([index.get(str(x), -1) for x in labels[rows]], dtype=np.int64)
        return classes, rows[ids >= 0], ids[ids >= 0], dropped

    def apply(self, ds, log: Callable[[str], None] | None = None):
        """`select` on a dataset, logging what was dropped and why."""
        captures = ds.column("capture").astype(str) if self.min_captures > 1 else None
        out = self.select(ds.labels, captures)
        dropped = out[3]
        if dropped and log is not None:
            why = [f"< {self.min_sessions} sessions"] if self.min_sessions > 1 else []
            why += [f"< {self.min_captures} captures"] if self.min_captures > 1 else []
            why += ["not included"] if self.include else []
            why += ["excluded"] if self.exclude else []
            log(f"dropped {len(dropped)} classes ({' or '.join(why) or 'no sessions'}): {_listing(sorted(dropped))}")
        return out


def _listing(names: list[str], limit: int = 40) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def select_classes(labels: np.ndarray, min_sessions: int, captures: np.ndarray | None = None, min_captures: int = 0,
                   exclude: Iterable[str] = (), include: Iterable[str] = ()):
    """`ClassSelection(...).select(labels, captures)` in one call."""
    return ClassSelection(min_sessions, min_captures, tuple(include), tuple(exclude)).select(labels, captures)

