"""Every third-party import is a declared dependency of the distribution that ships it.

A dependency that happens to be installed in the development environment (as a
dependency of a dependency, or of the dev extras) but is not declared makes a
plain `pip install .` produce servers that die with ModuleNotFoundError. Imports
are read with `ast`; modules map to distributions through the installed
distributions' file lists (`importlib.metadata`), so namespace packages such as
`google.*` and `opentelemetry.*` resolve to the distribution that holds them.

- `server/src` and `flight/src` ship in the main distribution (`pyproject.toml`);
  every module of theirs runs in some server command, so every import must be in
  its `dependencies`, except those made only where an optional feature needs them
  (inside a function, under `TYPE_CHECKING`, or guarded by `except ImportError`),
  which may be in an extra instead.
- `clients/python/src` ships in the client distribution
  (`clients/python/pyproject.toml`) and in the main one: its imports must be in
  the client's dependencies, or in an extra when optional; a client module that
  imports an optional dependency at its top is itself imported only lazily.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"quiver", "quiver_server", "quiver_flight"}


@dataclass(frozen=True)
class Import:
    file: Path
    line: int
    module: str  # dotted name, as precise as the statement says
    lazy: bool  # inside a function, under TYPE_CHECKING, or guarded by except ImportError


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _guards_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
            return True
    return False


def imports_of(file: Path) -> list[Import]:
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(file, node.lineno, alias.name, lazy) for alias in node.names)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                for alias in node.names:
                    found.append(Import(file, node.lineno, f"{node.module}.{alias.name}", lazy))
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            lazy = True
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, lazy)
            return
        if isinstance(node, ast.Try) and _guards_import_error(node):
            for child in node.body:
                visit(child, True)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, lazy)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, lazy)

    visit(ast.parse(file.read_text(), str(file)), False)
    return found


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def _top_level() -> dict[str, list[str]]:
    return metadata.packages_distributions()


@cache
def _paths_of(distribution: str) -> frozenset[str]:
    """The module paths (a/b/c and a/b) a distribution holds."""
    paths: set[str] = set()
    for file in metadata.distribution(distribution).files or ():
        parts = Path(str(file)).with_suffix("").parts
        if parts and parts[-1] == "__init__":
            parts = parts[:-1]
        paths.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(paths)


def distribution_of(module: str) -> str | None:
    """The distribution that provides `module` (a dotted name), or None if none installed does."""
    top = module.split(".")[0]
    candidates = {_normalize(d): d for d in _top_level().get(top, [])}
    if len(candidates) <= 1:
        return next(iter(candidates), None)
    parts = module.split(".")
    # The longest prefix of the dotted name that some candidates hold decides.
    for length in range(len(parts), 1, -1):
        path = "/".join(parts[:length])
        holders = sorted(n for n, d in candidates.items() if path in _paths_of(d))
        if holders:
            return holders[0]
    return None


def declared(pyproject: Path) -> tuple[set[str], set[str]]:
    """(dependencies, dependencies of any extra), normalized names."""
    project = tomllib.loads(pyproject.read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {_normalize(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements}  # type: ignore[union-attr]

    extras = set().union(*(names(v) for v in project.get("optional-dependencies", {}).values()))
    return names(project.get("dependencies", [])), extras


def third_party(imports: list[Import]) -> list[Import]:
    return [
        i for i in imports
        if i.module.split(".")[0] not in FIRST_PARTY
        and i.module.split(".")[0] not in sys.stdlib_module_names
    ]


def source_files(*roots: str) -> list[Path]:
    files = []
    for root in roots:
        files.extend(
            p for p in sorted((ROOT / root).rglob("*.py"))
            if not re.search(r"_pb2(_grpc)?\.py$", p.name)
        )
    return files


def problems(files: list[Path], pyproject: Path, dev_extra: str = "dev") -> list[str]:
    required, optional = declared(pyproject)
    project = tomllib.loads(pyproject.read_text())["project"]
    dev = {
        _normalize(re.match(r"[A-Za-z0-9._-]+", r).group(0))  # type: ignore[union-attr]
        for r in project.get("optional-dependencies", {}).get(dev_extra, [])
    }
    optional -= dev - required  # tools for developing Quiver are not a feature's dependency
    found = []
    for item in third_party([i for f in files for i in imports_of(f)]):
        where = f"{item.file.relative_to(ROOT)}:{item.line}: {item.module}"
        dist = distribution_of(item.module)
        if dist is None:
            found.append(f"{where}: no installed distribution provides it")
        elif dist not in required and not (item.lazy and dist in optional):
            allowed = "dependencies" if not item.lazy else "dependencies or an extra"
            found.append(f"{where}: from {dist}, not in the {allowed} of {pyproject.relative_to(ROOT)}")
    return found


def test_server_and_flight_imports_are_main_dependencies() -> None:
    assert problems(source_files("server/src", "flight/src"), ROOT / "pyproject.toml") == []


def test_client_imports_are_client_dependencies() -> None:
    client = ROOT / "clients/python/pyproject.toml"
    files = source_files("clients/python/src")
    required, _ = declared(client)
    # Client modules that import an optional dependency at their top are optional
    # themselves: nothing in the client imports them except lazily.
    optional_modules = set()
    for file in files:
        for item in third_party(imports_of(file)):
            if not item.lazy and distribution_of(item.module) not in required:
                optional_modules.add(".".join(file.relative_to(ROOT / "clients/python/src").with_suffix("").parts))
    eager = [
        f"{i.file.relative_to(ROOT)}:{i.line} imports optional module {i.module} at its top"
        for f in files for i in imports_of(f)
        if not i.lazy and any(i.module == m or i.module.startswith(m + ".") for m in optional_modules)
    ]
    assert eager == []
    # Their own top-level imports are then judged as lazy ones.
    lazy_files = [f for f in files
                  if ".".join(f.relative_to(ROOT / "clients/python/src").with_suffix("").parts)
                  in optional_modules]
    issues = problems([f for f in files if f not in lazy_files], client)
    issues += [p for p in _as_lazy(lazy_files, client)]
    assert issues == []


def _as_lazy(files: list[Path], pyproject: Path) -> list[str]:
    required, optional = declared(pyproject)
    found = []
    for item in third_party([i for f in files for i in imports_of(f)]):
        dist = distribution_of(item.module)
        if dist not in required | optional:
            found.append(f"{item.file.relative_to(ROOT)}:{item.line}: {item.module} ({dist}) is "
                         f"in neither the dependencies nor an extra of {pyproject.relative_to(ROOT)}")
    return found


def test_the_client_distribution_is_contained_in_the_main_one() -> None:
    """The main distribution depends on the client one, so it declares its dependencies too."""
    client_required, client_extras = declared(ROOT / "clients/python/pyproject.toml")
    main_required, main_extras = declared(ROOT / "pyproject.toml")
    assert client_required <= main_required
    assert client_extras <= main_required | main_extras


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import numpy as np", [("numpy", False)]),
        ("from google.rpc import status_pb2", [("google.rpc.status_pb2", False)]),
        ("def f():\n    import pandas", [("pandas", True)]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x", [("typing.TYPE_CHECKING", False), ("x", True)]),
        ("try:\n    import y\nexcept ImportError:\n    y = None", [("y", True)]),
        ("from . import sibling", []),
    ],
)
def test_import_reading(tmp_path: Path, source: str, expected: list[tuple[str, bool]]) -> None:
    file = tmp_path / "m.py"
    file.write_text(source)
    assert [(i.module, i.lazy) for i in imports_of(file)] == expected


def test_namespace_packages_resolve_to_their_distribution() -> None:
    assert distribution_of("google.protobuf.message") == "protobuf"
    assert distribution_of("google.rpc.status_pb2") == "googleapis-common-protos"
    assert distribution_of("opentelemetry.sdk.trace") == "opentelemetry-sdk"
    assert distribution_of("yaml") == "pyyaml"
    assert distribution_of("numpy.typing") == "numpy"


def test_both_distributions_build_with_one_pinned_backend() -> None:
    """`pip install .` builds both distributions (the main one depends on the client by
    path): each with the same exactly pinned backend, so a build does not change with
    whatever backend release is newest (and its deprecations) on the day."""
    systems = {
        path: tomllib.loads((ROOT / path).read_text())["build-system"]
        for path in ("pyproject.toml", "clients/python/pyproject.toml")
    }
    for path, system in systems.items():
        assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", r) for r in system["requires"]), (
            f"{path}: build requirements must be pinned exactly: {system['requires']}")
    assert len({(tuple(s["requires"]), s["build-backend"]) for s in systems.values()}) == 1, systems
