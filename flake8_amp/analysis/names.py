"""Qualified names through imports and aliases.

``import torch.nn.functional as F`` makes ``F.softmax`` resolve to ``torch.nn.functional.softmax``;
``from torch.nn import BCELoss as B`` makes ``B`` resolve to ``torch.nn.BCELoss``; ``from .losses import
focal`` makes ``focal`` resolve to ``.losses.focal`` (one dot per level, as written). Names that no import
binds resolve to ``None``: a local ``softmax`` is not torch's. ``from models import *`` binds names that
only the project index can list (see :meth:`ImportTable.star_modules`).
"""

from __future__ import annotations

import ast

_NN_MODULES = "torch.nn.modules."


def canonical_name(name: str) -> str:
    """Fold ``torch.nn.modules.<file>.X`` onto the public ``torch.nn.X`` that torch re-exports."""
    if name.startswith(_NN_MODULES):
        module, _, attr = name[len(_NN_MODULES) :].rpartition(".")
        if module:
            return "torch.nn." + attr
    return name


class ImportTable:
    """Local names bound by the module's import statements (anywhere in the file)."""

    def __init__(self) -> None:
        self._bindings: dict[str, str] = {}
        #: ``from X import *``: (module as written, with one leading dot per level)
        self.star_modules: list[str] = []

    def add(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    self._bindings[alias.asname] = alias.name
                else:
                    top = alias.name.partition(".")[0]
                    self._bindings[top] = top
            return
        module = "." * (node.level or 0) + (node.module or "")
        for alias in node.names:
            if alias.name == "*":
                self.star_modules.append(module)
            else:
                separator = "" if module.endswith(".") else "."
                self._bindings[alias.asname or alias.name] = f"{module}{separator}{alias.name}"

    def bind(self, local: str, qualified: str) -> None:
        """A binding learnt elsewhere: a name a star import brings in, read off the imported module."""
        self._bindings.setdefault(local, qualified)

    def is_bound(self, local: str) -> bool:
        return local in self._bindings

    def bindings(self) -> dict[str, str]:
        """Local name -> qualified name, for every name an import binds."""
        return dict(self._bindings)

    def resolve(self, node: ast.AST) -> str | None:
        """The qualified name an expression like ``F.softmax`` refers to, or None if it is not imported."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        base = self._bindings.get(node.id)
        if base is None:
            return None
        parts.append(base)
        return canonical_name(".".join(reversed(parts)))

    def local_names_for(self, qualified_names: set[str] | frozenset[str]) -> set[str]:
        """The local names an import binds directly to one of ``qualified_names`` (``B`` for
        ``from torch.nn import BCELoss as B``): a cheap pre-filter before resolving Name nodes."""
        return {local for local, qualified in self._bindings.items() if canonical_name(qualified) in qualified_names}

    def imports_from(self, package: str) -> bool:
        """Whether any import binds a name from ``package`` (or the package itself)."""
        prefix = package + "."
        return any(q == package or q.startswith(prefix) for q in self._bindings.values())
