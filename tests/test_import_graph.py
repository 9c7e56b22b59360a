"""Package layering: reward signals, sandboxes and agents never reach up into envs, trainers or the wiring.

Read from the source with ``ast``, function-level (lazy) imports included: a lazy import is still a
dependency, and a circle of them is still a circle to whoever moves a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Folder -> its package under the one ``aligngym`` namespace (``aligngym/`` itself is the wiring).
PACKAGES = {"envs": "envs", "agents": "agents", "feedback": "feedback", "sandboxes": "sandboxes"}
PACKAGES |= {"trainers": "trainers", "aligngym": "aligngym"}
#: What each package must never import. Any ``aligngym.*`` wiring module (trajectory, episode, rollout, cli)
#: sits on top: it imports envs and agents, so a lower package importing it closes a circle.
FORBIDDEN = {
    "feedback": {"envs", "trainers", "aligngym"},
    "sandboxes": {"envs", "trainers", "aligngym"},
    "agents": {"envs", "trainers", "aligngym"},
    "envs": {"trainers", "aligngym"},
}


def imported_packages(source: str, module: tuple[str, ...]) -> list[tuple[str, int]]:
    """(package, line) for every import of an aligngym package in ``source``, anywhere in the file.

    ``module`` is the importing module's dotted path (``("aligngym", "envs", "base")``), for relative imports.
    A name outside a package folder (``aligngym.episode``) counts as the wiring, ``aligngym``.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(module[: len(module) - node.level]) if node.level else []
            target = base + (node.module.split(".") if node.module else [])
            # `from aligngym import envs` and `from .. import envs` import a package by name.
            targets = [target + [alias.name] for alias in node.names] if target == ["aligngym"] else [target]
        else:
            continue
        for parts in targets:
            if parts[0] != "aligngym":
                continue
            package = parts[1] if len(parts) > 1 and parts[1] in PACKAGES else "aligngym"
            found.append((package, node.lineno))
    return found


def package_imports() -> dict[str, set[tuple[str, str]]]:
    """Package -> {(imported package, "file:line")} over the source tree, self-imports left out."""
    edges: dict[str, set[tuple[str, str]]] = {p: set() for p in PACKAGES}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            parts = rel.with_suffix("").parts
            module = ("aligngym", *parts[1:]) if folder == "aligngym" else ("aligngym", *parts)
            if path.name == "__init__.py":
                module = (*module[:-1], "__init__")  # relative imports resolve from the package itself
            for target, line in imported_packages(path.read_text(encoding="utf-8"), module):
                if target != package:
                    edges[package].add((target, f"{rel}:{line}"))
    return edges


def test_the_parser_sees_lazy_relative_and_aliased_imports():
    source = (
        "import os\nfrom . import base\nfrom ..envs import make\n"
        "def later():\n    import aligngym.trainers.grpo as g\n    from aligngym import episode, envs\n"
        "class C:\n    def m(self):\n        from aligngym.feedback.answers import normalize\n"
    )
    found = imported_packages(source, ("aligngym", "feedback", "verifier"))
    assert found == [
        ("feedback", 2),
        ("envs", 3),
        ("trainers", 5),
        ("aligngym", 6),
        ("envs", 6),
        ("feedback", 9),
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_packages_never_import_upper_ones(package):
    bad = sorted(
        (target, where) for target, where in package_imports()[package] if target in FORBIDDEN[package]
    )
    assert not bad, f"{package} imports {bad}"


def test_envs_feedback_agents_sandboxes_form_no_circle():
    lower = set(FORBIDDEN)
    graph = {p: {t for t, _ in edges if t in lower} for p, edges in package_imports().items() if p in lower}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        assert node not in path, f"import circle: {' -> '.join([*path, node])}"
        if node not in done:
            for target in sorted(graph[node]):
                visit(target, [*path, node])
            done.add(node)

    for package in sorted(graph):
        visit(package, [])
