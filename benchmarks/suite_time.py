"""Compare the test suite's time of two trees of selfkd, test by test, on one machine.

    git worktree add /tmp/before <commit> && git worktree add /tmp/after <commit>
    flock /tmp/selfkd-heavy.lock .venv/bin/python benchmarks/suite_time.py /tmp/before /tmp/after

Each test file the two trees share runs in one tree, then at once in the other (the order alternating from file to
file), so that load from other work on the machine hits both alike. Each tree runs with its own sources
(PYTHONPATH) and this environment's packages, under make test's settings (ONEDNN_MAX_CPU_ISA=AVX2). The sum of
pytest's per-test times is compared over the tests that ran (not skipped) in both trees.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path


def run_file(tree: Path, test: str, report: Path) -> None:
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "AVX2")
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), ONEDNN_MAX_CPU_ISA=isa)
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "900",
                    f"--junitxml={report}", f"tests/{test}"], cwd=tree, env=env, capture_output=True)


def test_times(report: Path) -> dict[tuple[str, str], float]:
    """(class, test) -> seconds, for the tests of a JUnit report that ran."""
    if not report.is_file():
        return {}
    return {(case.get("classname"), case.get("name")): float(case.get("time"))
            for case in ET.parse(report).iter("testcase") if not any(c.tag == "skipped" for c in case)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    files = sorted({p.name for p in (args.before / "tests").glob("test_*.py")}
                   & {p.name for p in (args.after / "tests").glob("test_*.py")})
    times = {"before": {}, "after": {}}
    with tempfile.TemporaryDirectory() as folder:
        for i, test in enumerate(files):
            for side in (("before", "after") if i % 2 else ("after", "before")):
                report = Path(folder) / f"{side}_{test}.xml"
                run_file(getattr(args, side), test, report)
                times[side].update(test_times(report))
            print(f"{test}: done", flush=True)
    common = times["before"].keys() & times["after"].keys()
    before, after = (sum(times[side][k] for k in common) for side in ("before", "after"))
    print(f"{len(files)} shared test files, {len(common)} tests ran in both: before {before:.1f} s, after "
          f"{after:.1f} s ({100 * (after - before) / before:+.1f} %)")


if __name__ == "__main__":
    main()
