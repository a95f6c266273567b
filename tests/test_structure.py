"""Code-shape limits from issue 23: the `train` command stays short, and the optimiser modules
import each other in one direction only."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "diff3r_cli"


def _imports(path: Path) -> set[str]:
    """Every module a file imports (at any depth, TYPE_CHECKING blocks included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_train_command_function_below_80_lines():
    tree = ast.parse((PKG / "cli" / "train_command.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train")
    assert fn.end_lineno - fn.lineno + 1 < 80


def test_no_import_cycle_between_energy_and_linearization():
    assert "diff3r_cli.optim.linearization" in _imports(PKG / "optim" / "energy.py")
    assert "diff3r_cli.optim.energy" not in _imports(PKG / "optim" / "linearization.py")
