"""The layout rules of CONTRIBUTING.md, checked on the source: layers, import loops, task names, function length,
and a command line that answers --help without torch."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
MAX_FUNCTION_LINES = 45
# Modules that are about one task and may name it: its readers, models and methods (and the task table itself).
TASK_SPECIFIC = ("selfkd.tasks", "selfkd.data.segmentation", "selfkd.models.segmentation", "selfkd.methods.segmentation")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "selfkd").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The selfkd modules ``name`` imports anywhere in its file (function-level imports included; a package that
    discovers its modules with ``pkgutil.iter_modules`` imports each of them)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    text = path.read_text()
    found = set()
    if "pkgutil.iter_modules(__path__)" in text:
        found.update(m for m in known if m.rsplit(".", 1)[0] == name)
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "selfkd")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "selfkd":
                continue
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
    return found - {name}


def layers() -> list[tuple[str, list[str]]]:
    """CONTRIBUTING.md's layer table, top to bottom: ``(layer, module prefixes)``."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    block = text.split("<!-- layers:begin -->")[1].split("<!-- layers:end -->")[0]
    rows = [line.split() for line in block.strip("`\n").splitlines() if line.strip() and not line.startswith("```")]
    return [(row[0], row[1:]) for row in rows]


def layer_of(module: str, table) -> int:
    """Index of ``module``'s layer (0 = top): the layer of its longest matching prefix."""
    best = max(((len(prefix), i) for i, (_, prefixes) in enumerate(table) for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer of CONTRIBUTING.md's table")
    return best[1]


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    table, known = layers(), modules()
    wrong = []
    for name, path in known.items():
        mine = layer_of(name, table)
        for target in imports(name, path, known):
            if layer_of(target, table) < mine:
                wrong.append(f"{name} ({table[mine][0]}) imports {target} ({table[layer_of(target, table)][0]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_loop_even_through_function_level_imports():
    known = modules()
    graph = {name: imports(name, path, known) & known.keys() for name, path in known.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (loop := visit(nxt, path + [node])):
                return loop
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (loop := visit(start, [])):
            raise AssertionError("import loop: " + " -> ".join(loop[loop.index(loop[-1]):]))


def test_the_layer_table_covers_every_module_once():
    table = layers()
    prefixes = [p for _, ps in table for p in ps]
    assert len(prefixes) == len(set(prefixes))
    for name in modules():
        layer_of(name, table)


def test_no_code_outside_the_task_table_compares_a_task_name_with_a_literal():
    from selfkd.tasks import TASK_NAMES

    def names_a_task(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in TASK_NAMES
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(map(names_a_task, node.elts))

    found = []
    for name, path in modules().items():
        if name.startswith(TASK_SPECIFIC):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(map(names_a_task, [node.left, *node.comparators])):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, "task names compared with literals (look them up in selfkd.tasks.TASKS instead): " + \
        ", ".join(found)


def test_every_function_is_at_most_45_lines():
    long = []
    for path in (SRC / "selfkd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "--epochs", "x"], ["nonsense"]])
def test_help_and_argument_errors_answer_without_importing_torch(argv):
    code = ("import sys\nfrom selfkd.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "loaded = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
            "print('TORCH' if loaded else 'NO TORCH', file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert result.stderr.strip().splitlines()[-1] == "NO TORCH", result.stderr[-2000:]
    assert re.search(r"usage: selfkd", result.stdout + result.stderr)
