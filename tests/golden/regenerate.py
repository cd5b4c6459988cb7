"""Rewrite the golden results of tests/test_golden.py, on purpose, and print what changed.

    python tests/golden/regenerate.py              # every prep setting, from the Python reference
    python tests/golden/regenerate.py --check      # print the differences, write nothing
    python tests/golden/regenerate.py strict-all   # one setting

Results come from the Python reference engine; the compiled engine must give the same (the test
runs both). Review the printed differences before committing: each names the setting, the
capture and the tensor or column that changed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from conftest import SHARED  # noqa: E402
from golden_set import (COMBOS, GOLDEN, capture_hashes, compute, differences, dump,  # noqa: E402
                        golden_path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("combos", nargs="*", help=f"settings to regenerate (default: all of {', '.join(COMBOS)})")
    parser.add_argument("--check", action="store_true", help="print the differences only")
    parser.add_argument("--backend", default="python", choices=("python", "numba"))
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"{SHARED} is absent: the golden captures live there", file=sys.stderr)
        return 2
    unknown = set(args.combos) - set(COMBOS)
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; known: {', '.join(COMBOS)}")
    changed = 0
    hashes = capture_hashes(SHARED)
    old_hashes = json.loads((GOLDEN / "captures.json").read_text()) if (GOLDEN / "captures.json").exists() else {}
    for line in differences(old_hashes, hashes, "captures.json"):
        print(line)
        changed += 1
    if not args.check:
        (GOLDEN / "captures.json").write_text(dump(hashes))
    with tempfile.TemporaryDirectory() as tmp:
        for combo in args.combos or COMBOS:
            new = compute(SHARED, Path(tmp), combo, args.backend)
            path = golden_path(combo)
            old = json.loads(path.read_text()) if path.exists() else {}
            lines = differences(old, new, combo)
            for line in lines:
                print(line)
            changed += len(lines)
            if not args.check:
                path.write_text(dump(new))
    print(f"{changed} differences" + ("" if args.check else f"; written to {GOLDEN}"))
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
