"""Print the rows of the README's "Fidelity" table: every fixture in ``tests/fidelity/fixtures`` compared with selfkd
as it is now.

    PYTHONPATH=src ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=1 python tests/fidelity/report.py [PATTERN]

One row per case (its float64 and float32 fixtures): method, reference repository @ commit, what is compared, the
largest relative difference in float64 (every kind: loss terms, total, each gradient's norm and entries) and in
float32 (loss terms and total; gradients as each tensor's norm against the whole gradient's, see
``harness.tolerances``), and the selfkd options the comparison needs. A fixture is found by its file alone: its
``selfkd_side`` names the ``side_<name>.py`` module that runs selfkd on it.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity import harness  # noqa: E402


def row(fixtures: dict[str, dict], worst: dict[str, dict]) -> str:
    first = next(iter(fixtures.values()))
    ref = first["reference"]
    method = f"`{first['method']}`" + (" (segmentation)" if first["task"] == "segmentation" else "")
    cells = [method, f"{ref['repository']} @ {ref['commit'][:7]}", first["compared"]]
    f64, f32 = worst.get("float64"), worst.get("float32")
    cells.append("—" if f64 is None else f"{max(f64.values()):.0e}")
    cells.append("—" if f32 is None else f"{max(f32['losses'], f32['loss']):.0e} (loss), "
                                         f"{f32['grad_whole']:.0e} (gradients)")
    cells.append(first["options_needed"])
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    cases: dict[str, dict[str, dict]] = defaultdict(dict)
    for name in harness.fixture_names(argv[0] if argv else "*"):
        fixture = harness.load(name)
        cases[fixture["case"]][fixture["dtype"]] = fixture
    print(f"torch {torch.__version__}; {len(cases)} cases\n")
    print("| method | reference repository @ commit | what is compared | largest rel. difference float64 | float32 "
          "| options needed |\n|---|---|---|---|---|---|")
    for fixtures in cases.values():
        worst = {dtype: harness.compare(fixture) for dtype, fixture in fixtures.items()}
        print(row(fixtures, worst), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
