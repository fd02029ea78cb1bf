"""Functions referenced by import path: found, hashed and checked against the registry.

`quiver apply` records a digest of every function's source with the
definition that names it. Servers load functions through `FunctionLoader`,
which refuses to run a function whose source no longer hashes the same: code
deployed without `quiver apply`, or applied without being deployed, is a
visible error (FAILED_PRECONDITION), never a silent change of what a feature
means. When the source changed on disk since the module was imported (a new
version was applied and deployed), the module is reloaded once.

Modules are looked up in the feature repo first, then installed packages.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quiver.errors import DefinitionError, FailedPreconditionError

AnyFunction = Callable[..., Any]


def source_hash(function: AnyFunction) -> str:
    """``"sha256:<hex>"`` of the function's own source text."""
    source = inspect.getsource(function)
    return "sha256:" + hashlib.sha256(source.encode()).hexdigest()


class FunctionLoader:
    """Imports functions by path, with the feature repo ahead of installed packages.

    Args:
        repo_path: The feature repo directory (holding quiver.yaml).
    """

    def __init__(self, repo_path: Path | str) -> None:
        self.repo_path = str(Path(repo_path).resolve())
        self._lock = threading.Lock()
        self._checked: dict[tuple[str, str], AnyFunction] = {}

    def resolve(self, path: str, what: str) -> tuple[AnyFunction, str]:
        """Import `path` for `quiver apply`: the function and its source hash.

        Raises:
            DefinitionError: it cannot be imported, is not a function, or has no
                readable source; the message names `what`.
        """
        try:
            function = self._import(path)
        except Exception as exc:
            raise DefinitionError(
                f"{what}: cannot import {path!r} ({type(exc).__name__}: {exc}); put the module in "
                f"the feature repo or install it"
            ) from None
        try:
            return function, source_hash(function)
        except (OSError, TypeError):
            raise DefinitionError(
                f"{what}: {path!r} has no readable source; use a module-level def in a .py file"
            ) from None

    def load(self, path: str, expected_hash: str, what: str) -> AnyFunction:
        """The function at `path`, if its source still hashes to `expected_hash`.

        Raises:
            FailedPreconditionError: it cannot be imported, or its source differs
                from what was applied (reason FUNCTION_CHANGED).
        """
        key = (path, expected_hash)
        found = self._checked.get(key)
        if found is not None:
            return found
        with self._lock:
            try:
                function = self._import(path)
                digest = source_hash(function)
                if digest != expected_hash:
                    function = self._import(path, reload=True)
                    digest = source_hash(function)
            except Exception as exc:
                raise FailedPreconditionError(
                    f"{what}: cannot load {path!r} ({type(exc).__name__}); deploy the feature "
                    f"repo's code with the server",
                    reason="FUNCTION_UNAVAILABLE", metadata={"function": path},
                ) from None
            if digest != expected_hash:
                raise FailedPreconditionError(
                    f"{what}: the deployed source of {path!r} differs from the one applied "
                    f"({digest[:15]} here, {expected_hash[:15]} in the registry); run `quiver apply` "
                    f"with this code, or deploy the applied code",
                    reason="FUNCTION_CHANGED", metadata={"function": path},
                )
            self._checked[key] = function
            return function

    def _import(self, path: str, reload: bool = False) -> AnyFunction:
        module_name, _, attribute = path.partition(":")
        top = module_name.split(".")[0]
        repo = Path(self.repo_path)
        in_repo = (repo / f"{top}.py").is_file() or (repo / top / "__init__.py").is_file()
        with _IMPORT_LOCK:
            cached = sys.modules.get(module_name)
            stale = cached is not None and (reload or (in_repo and not _inside(cached, repo)))
            if stale:
                # Import afresh (a changed source, or a same-named module of another repo).
                for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
                    del sys.modules[name]
                importlib.invalidate_caches()
            sys.path.insert(0, self.repo_path)
            try:
                module = importlib.import_module(module_name)
            finally:
                sys.path.remove(self.repo_path)
        function = getattr(module, attribute)
        if not isinstance(function, types.FunctionType):
            raise TypeError(f"{path} is a {type(function).__name__}, not a function")
        return function


# sys.path and sys.modules are process-wide.
_IMPORT_LOCK = threading.RLock()


def _inside(module: types.ModuleType, directory: Path) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve().is_relative_to(directory)
