"""SPEC §1: `tradeguard` holds no Pykka and never depends on the actors.

Only `tradeguard/cli.py` and the tools under `tradeguard/tools/` run the whole
system, so only they may import `actors` or `pykka`. The imports are read with
`ast`, lazy ones inside functions included, so a cycle cannot creep back in.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "tradeguard"
FORBIDDEN = ("actors", "pykka")


def imported_packages(source: str) -> set[str]:
    """The top-level package of every import in a module, at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def allowed(path: Path) -> bool:
    relative = path.relative_to(ROOT)
    return relative.parts[0] == "tools" or relative == Path("cli.py")


def test_the_reader_sees_imports_at_any_depth() -> None:
    source = "import os\ndef f():\n    from actors.system import System\n    import pykka.debug\n"
    assert imported_packages(source) >= {"actors", "pykka", "os"}


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_tools_and_the_cli_import_actors_or_pykka(path: Path) -> None:
    if allowed(path):
        return
    bad = imported_packages(path.read_text(encoding="utf-8")) & set(FORBIDDEN)
    where = path.relative_to(ROOT)
    assert not bad, f"{where} imports {sorted(bad)}: move that code to actors/ or tools/"
