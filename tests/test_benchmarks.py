"""The benchmark scripts still name what they import.

No test runs the benchmarks (they take minutes to hours), so a renamed function they import, often a private one and
often inside a function, would only show when someone next runs them. Their imports, and the names they read off
fedguard's modules, are checked by name, not run.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MODULES = sorted(BENCHMARKS.glob("*.py"))
SCRIPTS = [p for p in MODULES if not p.name.startswith("_")]  # the shared helpers (_args.py, ...) are not scripts


def _imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` for every ``from module import name`` in ``path``, at any depth; modules of the benchmarks
    folder itself as they are imported there (the folder is on ``sys.path`` when a script runs)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.module, alias.name) for alias in node.names if alias.name != "*"]
    return found


def test_the_benchmarks_are_found():
    assert len(SCRIPTS) >= 13


@pytest.mark.parametrize("script", MODULES, ids=lambda p: p.name)
def test_every_name_a_benchmark_imports_exists(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # restored after the test, as the scripts' own sys.path inserts are
    # the speed scripts set GOMP_SPINCOUNT on import unless the environment says how OpenMP threads wait: say it for
    # the test, so that what they set does not outlive it in this process's environment
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "passive"))
    local = {p.stem for p in MODULES}
    missing, modules = [], {}
    for module, name in _imports(script):
        if module.split(".")[0] not in {"fedguard", "tests", *local}:
            continue  # third-party: the environment's business
        imported = importlib.import_module(module)
        if hasattr(imported, name):
            value = getattr(imported, name)
        else:
            try:
                value = importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{module}.{name}")
                continue
        if inspect.ismodule(value):
            modules[name] = value
    tree = ast.parse(script.read_text(encoding="utf-8"))
    for node in ast.walk(tree):  # what the script reads off an imported module of ours (``imprint._groups``)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            if not hasattr(modules[node.value.id], node.attr):
                missing.append(f"{modules[node.value.id].__name__}.{node.attr}")
    assert not missing, f"{script.name} uses names that no longer exist: {missing}"


def test_the_benchmarks_refuse_bad_arguments_in_one_line(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    _args = importlib.import_module("_args")
    from fedguard.errors import InputError

    parser = _args.new_parser("A script.\n", "Quick run: --n 1.")
    parser.add_argument("--n", type=_args.positive_int, default=3)
    parser.add_argument("--only", type=_args.listed(_args.one_of("dlg", "ig")), default="dlg,ig")
    assert parser.parse_args(["--only", "dlg, ig"]).only == ["dlg", "ig"]
    assert parser.parse_args([]).n == 3
    for bad in (["--n", "0"], ["--n", "x"], ["--only", "bogus"], ["--only", "dlg,"]):
        with pytest.raises(SystemExit) as exit:
            parser.parse_args(bad)
        assert exit.value.code == 2
    with pytest.raises(SystemExit) as exit, _args.one_line_errors(parser):
        raise InputError("--n 5 is larger than the data")
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("error: --n 5 is larger than the data")
