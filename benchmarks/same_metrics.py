"""Whether two sweep (or demo) folders trained the same numbers: every run folder of the first is compared with the
one of the same name in the second, metrics.jsonl row by row, every key except the timings (``time/*``).

    python benchmarks/same_metrics.py runs/demo_before runs/demo_after

Used to show that a refactoring changed no behaviour: the same command on two trees, on one machine, must give
identical numbers (exit 0); any difference is listed (exit 1).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def compare(first: Path, second: Path) -> list[str]:
    problems, compared = [], 0
    for run in sorted(p for p in first.iterdir() if (p / "metrics.jsonl").is_file()):
        other = second / run.name
        if not (other / "metrics.jsonl").is_file():
            problems.append(f"{run.name}: missing in {second}")
            continue
        a, b = rows(run), rows(other)
        if len(a) != len(b):
            problems.append(f"{run.name}: {len(a)} epochs vs {len(b)}")
        for x, y in zip(a, b):
            for key in sorted((set(x) | set(y)) - {k for k in set(x) | set(y) if k.startswith("time/")}):
                compared += 1
                if x.get(key) != y.get(key):
                    problems.append(f"{run.name} epoch {x.get('epoch')}: {key} {x.get(key)!r} vs {y.get(key)!r}")
        print(f"{run.name}: {len(a)} epochs compared")
    print(f"{compared} numbers compared, {len(problems)} difference(s)")
    return problems


if __name__ == "__main__":
    found = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(found[:50]))
    sys.exit(1 if found else 0)
