"""The package's layout rules: one definition per public name, short functions, the import layers."""

from __future__ import annotations

import ast
import collections
import shutil
import subprocess
from pathlib import Path

import pytest

from smelib.config import ConfigError, resolve

PACKAGE = Path(__file__).resolve().parent.parent / "smelib"
MAX_FUNCTION_LINES = 120


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(f, ast.parse(f.read_text(encoding="utf-8"))) for f in sorted(PACKAGE.rglob("*.py"))]


def _public_definitions(tree: ast.Module) -> list[str]:
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return [n for n in names if not n.startswith("_")]


def test_no_public_name_is_defined_twice() -> None:
    where = collections.defaultdict(list)
    for path, tree in _modules():
        for name in _public_definitions(tree):
            where[name].append(str(path.relative_to(PACKAGE)))
    twice = {name: files for name, files in where.items() if len(files) > 1}
    assert not twice, f"defined in more than one module: {twice}"


def test_the_checks_see_a_duplicate_and_a_long_function() -> None:
    # The two rules above and below must be able to fail.
    tree = ast.parse("def f():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES + 1) + "\nA = 1\nA = 2\n")
    assert _public_definitions(tree).count("A") == 2
    assert tree.body[0].end_lineno - tree.body[0].lineno + 1 > MAX_FUNCTION_LINES


def test_no_function_is_longer_than_the_limit() -> None:
    long = [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, tree in _modules() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_training_loop_is_short() -> None:
    from smelib import training

    lines = ast.parse(Path(training.__file__).read_text(encoding="utf-8"))
    fit = next(n for n in lines.body if isinstance(n, ast.FunctionDef) and n.name == "fit")
    assert fit.end_lineno - fit.lineno + 1 <= 80


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter is not installed (requirements.txt)")
def test_import_layers_hold() -> None:
    out = subprocess.run(["lint-imports", "--no-cache"], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_retired_config_keys_are_accepted_unset_and_refused_set() -> None:
    # Run configs stored before a key was retired still resolve (and so resume); a set value is an error.
    assert "nan_at_step" not in resolve({"train": {"nan_at_step": None}})["train"]
    with pytest.raises(ConfigError, match="train.nan_at_step: this key was removed"):
        resolve({"train": {"nan_at_step": 3}})
