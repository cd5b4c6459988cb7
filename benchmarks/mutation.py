"""Mutation testing (issue 19): small bugs made on purpose in the modules where a silent one costs
most, and whether the tests fail. Uses mutmut 3, outside the default test run.

    pip install "mutmut>=3.8,<4"
    nice -n 19 python benchmarks/mutation.py                     # every module (hours on 2 busy cores)
    nice -n 19 python benchmarks/mutation.py losses metrics      # some of them
    python benchmarks/mutation.py --list                         # the modules and the tests each runs

Each module runs in a copy of the tree under bench-out/mutation/<module>/ (mutmut writes its
`mutants/` folder there, never in the checkout), with the Python prep engine
(TRAFFICLENS_BACKEND=python) and its numba-parametrised tests deselected: the compiled kernels
are not mutated, and loading them in every forked test run would cost more than the tests.
mutmut runs, for each mutant, only the selected tests that reach the mutated function, and stops
at the first failure. A summary table goes to stdout and to bench-out/mutation/results.md; each
module's surviving mutants, with their diffs, to bench-out/mutation/<module>/survivors.txt.

Run it on a quiet machine: mutmut's timeouts are wall-clock (3x a test's time + 10 s), and a
timeout counts as a kill. A rerun next to a training job once called 56 survivors "timeouts";
each survived again when run alone. Treat a survivor that turns into a timeout with suspicion.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-out" / "mutation"

# module -> (files to mutate, tests that exercise them, mutant name patterns or None for all).
# Names: "trafficlens.inference.classifier.x__meta_row__mutmut_3", methods "...xǁClassifierǁ_rows__mutmut_1".
MODULES: dict[str, tuple[list[str], list[str], list[str] | None]] = {
    "capture/reader.py": (["src/trafficlens/capture/reader.py"],
                          ["tests/test_capture.py", "tests/test_capture_reader.py", "tests/test_capture_fuzz.py",
                           # the reader's own stdin tests (the CLI ones spawn processes mutmut cannot run)
                           "tests/test_stdin.py::test_reader_streams_stdin_once_in_chunks",
                           "tests/test_stdin.py::test_stdin_that_is_no_capture_is_a_one_line_error"], None),
    "features/views.py": (["src/trafficlens/prep/tensors/views.py"],
                          ["tests/test_mask_fields.py", "tests/test_strict_mask.py", "tests/test_prep_pipeline.py",
                           "tests/test_golden.py"], None),
    "features/tls.py": (["src/trafficlens/prep/tensors/tls.py"],
                        ["tests/test_strict_mask.py", "tests/test_mask_fields.py", "tests/test_golden.py"], None),
    "features/quic.py": (["src/trafficlens/prep/tensors/quic.py"],
                         ["tests/test_quic_fields.py", "tests/test_strict_mask.py", "tests/test_mask_fields.py",
                          "tests/test_golden.py"], None),
    "flows/": (["src/trafficlens/prep/sessions/assembler.py", "src/trafficlens/prep/sessions/session.py"],
               ["tests/test_flows.py", "tests/test_prep_pipeline.py", "tests/test_strict_mask.py",
                "tests/test_mask_fields.py", "tests/test_golden.py"], None),
    "training/splits.py": (["src/trafficlens/training/splits.py"], ["tests/test_splits.py"], None),
    "evaluation/metrics.py": (["src/trafficlens/training/metrics.py"],
                              ["tests/test_evaluation.py::test_metrics_match_sklearn",
                               "tests/test_evaluation.py::test_metrics_by_hand",
                               "tests/test_evaluation.py::test_softmax_is_per_row_stable_and_float32",
                               "tests/test_evaluation.py::test_provenance_says_what_produced_the_metrics",
                               "tests/test_evaluation.py::test_provenance_defaults_to_the_test_side_and_takes_a_split_without_coverage",
                               "tests/test_evaluation.py::test_top_k_up_to_the_class_count_and_no_undefined_metric_warning",
                               "tests/test_evaluation.py::test_metrics_of_nothing_scored_are_zeros_not_an_error"], None),
    "models/losses.py": (["src/trafficlens/models/losses.py"], ["tests/test_models.py::test_inverse_frequency_weights_are_n_over_c_n_c",
                         "tests/test_models.py::test_focal_loss_is_the_class_weighted_formula_of_ge_2021",
                         "tests/test_models.py::test_focal_loss_gradient_raises_the_true_class",
                         "tests/test_models.py::test_weighted_cross_entropy_and_plain_cross_entropy_by_hand"], None),
    "serving/classifier.py (rows)": (["src/trafficlens/inference/classifier.py"], ["tests/test_prediction_rows.py"],
                                     ["*x__meta_row__*", "*ǁClassifierǁ_rows__*", "*ǁClassifierǁ_rows_for*"]),
    "serving/output.py": (["src/trafficlens/serving/output.py"], ["tests/test_output.py", "tests/test_prediction_rows.py"],
                          None),
}
# tests left out of a module's runs beyond the numba ones (-k): slow, and covered by faster ones
DESELECT = {"training/splits.py": "bundled_sample"}
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault"}


def slug(module: str) -> str:
    return module.split(" ")[0].strip("/").replace("/", "-").replace(".py", "") + ("-rows" if "(rows)" in module else "")


def prepare(module: str, work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "examples").symlink_to(ROOT / "examples")  # the bundled sample and model (mutmut copies it in)
    if (ROOT.parent / "shared").is_dir():  # the tests look for ../shared/data beside the tree they run in
        (work / "shared").symlink_to(ROOT.parent / "shared")
    write_settings(module, work)


def write_settings(module: str, work: Path) -> None:
    """pyproject.toml with mutmut's settings for `module`: what to mutate, the tests to run."""
    files, tests, _ = MODULES[module]
    deselect = " and ".join(f"not {k}" for k in ("numba", DESELECT.get(module)) if k)
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject += "\n[tool.mutmut]\n" + "\n".join([
        "source_paths = [\"src\"]",
        "also_copy = [\"examples\"]",
        f"only_mutate = {json.dumps(files)}",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        # the compiled engine is not mutated: its tests (and loading its kernels per run) are left out
        f"pytest_add_cli_args = {json.dumps(['-p', 'no:cacheprovider', '-k', deselect])}",
        "process_isolation = \"forkserver\"",  # torch is not fork-safe after it has run
        # a mutant that loops forever is stopped after this much CPU time (3x the tests' own + 10 s;
        # the first runs, to splits and metrics, used 10x + 30 s: hanging reader mutants then took
        # minutes each)
        "timeout_multiplier = 3.0",
        "timeout_constant = 10.0",
    ]) + "\n"
    (work / "pyproject.toml").write_text(pyproject)


def survivors_of(work: Path) -> list[str]:
    """The mutants of the last run that survived, that no selected test reached, or that it
    did not get to (stopped): worth a rerun once tests are added."""
    return sorted(name for meta in (work / "mutants").rglob("*.meta")
                  for name, code in json.loads(meta.read_text()).get("exit_code_by_key", {}).items()
                  if code in (0, 5, 33, None))


def run(module: str, jobs: int, rerun: bool = False) -> dict:
    """Test every mutant of `module` in a fresh copy; `rerun`: only the survivors of the last run,
    against the tests as they are now (new tests get their coverage collected first). mutmut
    forgets every result when its settings change (the module's test list here), and the copy's
    `src/` is the one of the first run: change either, and run the module afresh."""
    work = OUT / slug(module)
    patterns = MODULES[module][2] or []
    if rerun and (work / "mutants").is_dir():
        for tests in (work / "tests", work / "mutants" / "tests"):
            shutil.rmtree(tests)
            shutil.copytree(ROOT / "tests", tests, ignore=shutil.ignore_patterns("__pycache__"))
        write_settings(module, work)  # the module's test list as it is now
        patterns = survivors_of(work)
        if not patterns:
            return report(module, work, MODULES[module][2] or [], 0.0)
    else:
        prepare(module, work)
    # No PYTHONPATH: mutmut puts mutants/src first itself, and a path listed before that folder
    # exists is cached by the import system as "nothing here" (the checkout would be imported).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TRAFFICLENS_BACKEND="python", PYTHONDONTWRITEBYTECODE="1")
    mutmut = shutil.which("mutmut") or str(Path(sys.executable).parent / "mutmut")
    start = time.monotonic()
    with open(work / "mutmut-run.log", "w") as log:  # written as it goes: `tail -f` shows the progress
        proc = subprocess.run([mutmut, "run", "--max-children", str(jobs), *patterns], cwd=work, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        print(f"{module}: mutmut run failed ({proc.returncode}); see {work / 'mutmut-run.log'}", file=sys.stderr)
    return report(module, work, MODULES[module][2] or [], seconds)


def report(module: str, work: Path, patterns: list[str], seconds: float) -> dict:
    """Counts from mutmut's results in `work` (every mutant of the module, whichever run tested it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    mutmut = shutil.which("mutmut") or str(Path(sys.executable).parent / "mutmut")
    counts: dict[str, int] = {}
    survivors: list[str] = []
    for meta in (work / "mutants").rglob("*.meta"):
        data = json.loads(meta.read_text())
        for name, code in data.get("exit_code_by_key", {}).items():
            if patterns and not any(_match(name, p) for p in patterns):
                continue
            status = STATUS.get(code, "not checked" if code is None else "suspicious")
            counts[status] = counts.get(status, 0) + 1
            if status == "survived":
                survivors.append(name)
    diffs = []
    for name in sorted(survivors):
        shown = subprocess.run([mutmut, "show", name], cwd=work, env=env, capture_output=True, text=True)
        diffs.append(f"## {name}\n{shown.stdout.strip()}\n")
    (work / "survivors.txt").write_text("\n".join(diffs))
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    total = sum(counts.values())
    return {"module": module, "mutants": total, "killed": counts.get("killed", 0), "timeout": counts.get("timeout", 0),
            "survived": counts.get("survived", 0), "other": total - killed - counts.get("survived", 0),
            "score": killed / max(1, killed + counts.get("survived", 0)), "seconds": round(seconds),
            "counts": counts, "tests": MODULES[module][1]}


def _match(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


def table(results: list[dict]) -> str:
    lines = ["| module | mutants | killed | timeout | survived | other | score | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| `{r['module']}` | {r['mutants']} | {r['killed']} | {r['timeout']} | {r['survived']} | "
                     f"{r['other']} | {100 * r['score']:.1f}% | {r['seconds'] / 60:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help="substrings of module names (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--list", action="store_true", help="list the modules and their tests")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="test only the survivors (and the mutants no test reached) of the last run again, "
                             "against the tests as they are now")
    args = parser.parse_args()
    chosen = [m for m in MODULES if not args.modules or any(a in m for a in args.modules)]
    if args.list:
        for m in chosen:
            print(f"{m}: {' '.join(MODULES[m][0])}\n    tests: {' '.join(MODULES[m][1])}")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for module in chosen:
        print(f"{module} ...", flush=True)
        results.append(run(module, args.jobs, args.rerun_survivors))
        r = results[-1]
        print(f"    {r['mutants']} mutants, {r['killed'] + r['timeout']} killed, {r['survived']} survived "
              f"({100 * r['score']:.1f}%) in {r['seconds']} s", flush=True)
        (OUT / f"{slug(module)}.json").write_text(json.dumps(r, indent=1))
    text = table(results)
    print(text)
    (OUT / "results.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
