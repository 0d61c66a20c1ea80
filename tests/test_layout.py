"""The layout rules of docs/architecture.md, checked on the source: imports run one way along the data
flow, nothing imports the repository's folders by their bare names, and the exchange formats' names
appear only in their owner modules."""

from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("formats", "kernels", "lawfit", "trainer")
# What each package may import from voxmix (besides itself): the data flow, one way.
ALLOWED = {
    "formats": set(),
    "kernels": set(),
    "lawfit": {"formats"},
    "trainer.data": {"formats"},
    "trainer.pretrain": {"formats", "kernels", "trainer.data"},
    "trainer.downstream": {"formats", "trainer.data"},
    "trainer.study": {"formats", "lawfit", "trainer.data", "trainer.pretrain", "trainer.downstream"},
}
FORMATS = ("manifest", "runlog", "plan", "allocation", "laws", "encoder", "labels")


def _sources(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py") if ".venv" not in p.parts)


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _owner(rel: Path) -> str | None:
    parts = rel.with_suffix("").parts
    key = ".".join(parts[:2]) if parts[0] == "trainer" and len(parts) > 2 else parts[0]
    return key if key in ALLOWED else None


@pytest.mark.parametrize("path", _sources(*PACKAGES), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path):
    rel = path.relative_to(ROOT)
    owner = _owner(rel)
    if owner is None:  # trainer/*.py: the commands, which may use every package
        return
    for name in _imports(path):
        if not name.startswith("voxmix."):
            continue
        target = name.split(".")[1]
        if target == "trainer" and len(name.split(".")) > 2:
            target = ".".join(name.split(".")[1:3])
        if target == owner or target.startswith(owner + "."):
            continue
        assert target in ALLOWED[owner], f"{rel} imports {name}: {owner} may import only {ALLOWED[owner]}"


@pytest.mark.parametrize("folder", [*PACKAGES, "tests", "benchmarks", "scripts"])
def test_no_bare_imports_of_repository_folders(folder):
    bare = re.compile(r"^(formats|kernels|lawfit|trainer)(\.|$)")
    bad = [f"{p.relative_to(ROOT)}: {n}" for p in _sources(folder) for n in _imports(p) if bare.match(n)]
    assert not bad, "import these as voxmix.<package>:\n" + "\n".join(bad)


def _format_literals(path: Path) -> list[str]:
    """String constants that are a format's name itself (mentions in docstrings and help texts are fine)."""
    pattern = re.compile(r"voxmix\.(" + "|".join(FORMATS) + r")/\d+")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and pattern.fullmatch(n.value)
    ]


def test_format_names_live_in_their_owner_modules():
    bad = [
        f"{p.relative_to(ROOT)}: {v}"
        for p in _sources("kernels", "lawfit", "trainer", "scripts")
        for v in _format_literals(p)
    ]
    for fmt in FORMATS:
        assert _format_literals(ROOT / "formats" / f"{fmt}.py") == [f"voxmix.{fmt}/1"], fmt
    assert not bad, "use the FORMAT constant of voxmix.formats.<format>:\n" + "\n".join(bad)


def test_only_the_voxmix_namespace_is_installed():
    top = importlib.metadata.distribution("voxmix").read_text("top_level.txt").split()
    assert top == ["voxmix"]
