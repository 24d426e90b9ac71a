"""Docstring examples: each runs as a doctest or is one prose line naming what exists.

``make test`` runs the doctests (``pytest --doctest-modules dspex_rx``); this file checks
the rest: no unrun ``Example::`` blocks, an example on every public function, and that a
prose example calls only methods the object it names really has.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dspex_rx
from dspex_rx.client.cache import VariableCache
from dspex_rx.client.optimization.run import Proposal
from dspex_rx.client.watch import Watch
from dspex_rx.server import EmbeddedServer, Server
from dspex_rx.store import MemoryStore

PACKAGE = Path(dspex_rx.__file__).resolve().parent
# The names prose examples use for the public objects, and what each one is.
RECEIVERS: dict[str, Any] = {
    "session": dspex_rx.SessionContext,
    "store": MemoryStore,
    "cache": VariableCache,
    "server": Server,
    "embedded": EmbeddedServer,
    "watch": Watch,
    "proposal": Proposal,
}
# A receiver inside a quoted string or a path ("server.pem", client/watch.py) is not one;
# private attributes are instance state the class does not list.
CALL = re.compile(r"(?<![\w./\"'])(" + "|".join(RECEIVERS) + r")\.([A-Za-z]\w*)(?!\w*\.py\b)")
INLINE_CODE = re.compile(r"``(.+?)``", re.S)


def has(cls: Any, attribute: str) -> bool:
    """A method, property or class attribute, or a field an instance has (dataclass fields
    without defaults and annotated attributes are not class attributes)."""
    return hasattr(cls, attribute) or any(
        attribute in getattr(k, "__annotations__", {}) for k in cls.__mro__
    )


def sources() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] != "v1" and "_pb2" not in relative.name:
            yield str(relative), path


def docstrings(tree: ast.Module) -> Iterator[tuple[str, ast.AST, str]]:
    """(qualified name, node, docstring) for the module and every def/class in it."""
    yield "<module>", tree, ast.get_docstring(tree) or ""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.AST, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                yield name, child, ast.get_docstring(child) or ""
                if isinstance(child, ast.ClassDef):
                    yield from walk(child, name + ".")

    yield from walk(tree, "")


def public(name: str, node: ast.AST) -> bool:
    parts = name.split(".")
    if any(p.startswith("_") for p in parts):
        return False
    decorators = getattr(node, "decorator_list", [])
    # An overload's docstring is its implementation's; a setter shares its property's.
    return not any(
        ast.unparse(d).endswith(("overload", ".setter", ".deleter")) for d in decorators
    )


@pytest.mark.parametrize("relative,path", list(sources()), ids=lambda v: str(v))
def test_no_example_block_is_left_unrun(relative: str, path: Path) -> None:
    # An ``Example::`` literal block is run by nothing, so it rots (one called a method
    # that did not exist): each is a doctest or one prose line instead.
    unrun = [
        name for name, _, doc in docstrings(ast.parse(path.read_text()))
        if "Example::" in doc
    ]
    assert unrun == []


@pytest.mark.parametrize("relative,path", list(sources()), ids=lambda v: str(v))
def test_every_public_function_and_class_has_an_example(relative: str, path: Path) -> None:
    missing = [
        name
        for name, node, doc in docstrings(ast.parse(path.read_text()))
        if name != "<module>" and public(name, node) and ">>>" not in doc
        and "Example" not in doc
    ]
    assert missing == []


@pytest.mark.parametrize("relative,path", list(sources()), ids=lambda v: str(v))
def test_prose_examples_call_only_what_exists(relative: str, path: Path) -> None:
    wrong = []
    for name, _, doc in docstrings(ast.parse(path.read_text())):
        for code in INLINE_CODE.findall(doc):
            for receiver, attribute in CALL.findall(code):
                if not has(RECEIVERS[receiver], attribute):
                    wrong.append(f"{name}: {receiver}.{attribute} in ``{code}``")
    assert wrong == []


def test_the_prose_check_catches_a_method_that_does_not_exist() -> None:
    # The check itself must be able to fail: a made-up method is reported.
    code = INLINE_CODE.findall("Example: ``await session.get_variables_by_magic('t')``")
    assert [
        f"{r}.{a}" for c in code for r, a in CALL.findall(c) if not has(RECEIVERS[r], a)
    ] == ["session.get_variables_by_magic"]
