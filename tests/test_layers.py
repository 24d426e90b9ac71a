"""Layer contracts over the package tree: who may import whom, no cycles, sizes.

The rules are ARCHITECTURE.md's tree; they are read from the source with ``ast``, so a
lazy import inside a function counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import layers_tree
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dspex_rx"

# What each layer may import of ours (itself always). The top-level composition modules
# (dspex_rx/__init__.py, dspex_rx/dspy.py) may import anything and are not listed.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "logs": set(),
    "v1": set(),
    "etcd_v3": set(),
    "core": {"errors"},
    "wire": {"errors", "logs", "core", "v1"},
    "store": {"errors", "logs", "core"},
    "server": {"errors", "logs", "core", "wire", "v1", "store", "etcd"},
    "etcd": {"errors", "logs", "core", "store", "etcd_v3"},
    "rx": {"errors", "logs"},
    "client": {"errors", "logs", "core", "wire", "v1", "rx"},
    "integrations": {"errors", "logs", "core", "wire", "v1", "rx", "client"},
    # The shell client and the web bridge are users of the public client API.
    "shell": {"errors", "logs", "core", "wire", "v1", "rx", "client"},
    "web": {"errors", "logs", "core", "rx", "client"},
}
# Composition modules: the package's front door, the DSPy integration's, and the one
# command line that gathers the server's, the shell's and the web view's subcommands.
TOP_LEVEL = {"__init__", "dspy", "cli"}
# "about 500 lines or less" per module, "no class over ~600 lines": the hard lines here
# leave the "about" its room and fail a file that grew a second job.
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 600


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        # Generated code (dspex_rx/v1, dspex_rx/etcd_v3's *_pb2*) is checked against its
        # protos by test_proto_fresh.py and test_etcd_proto_fresh.py instead.
        if relative.parts[0] == "v1" or "_pb2" in relative.name:
            continue
        dotted = ".".join(("dspex_rx", *relative.with_suffix("").parts))
        yield dotted.removesuffix(".__init__"), path


def layer_of(dotted: str) -> str:
    return dotted.split(".")[1] if dotted.count(".") else "__init__"


def our_imports(path: Path, dotted: str, *, runtime_top_only: bool = False) -> set[str]:
    """The dspex_rx modules ``path`` imports (absolute or relative)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    nodes: list[ast.AST]
    if runtime_top_only:
        nodes = [n for n in tree.body if not _type_checking_block(n)]
    else:
        nodes = list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dspex_rx")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            if base.startswith("dspex_rx"):
                found.add(base)
                # ``from dspex_rx.client import exchange`` imports a module, not a name.
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    if _exists(candidate):
                        found.add(candidate)
    return found


def _type_checking_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _exists(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (
        PACKAGE / relative / "__init__.py"
    ).exists()


def test_every_layer_imports_only_the_layers_below_it() -> None:
    broken = []
    for dotted, path in modules():
        layer = layer_of(dotted)
        if layer in TOP_LEVEL:
            continue
        allowed = ALLOWED[layer] | {layer}
        for imported in our_imports(path, dotted):
            if imported == "dspex_rx" or layer_of(imported) not in allowed:
                broken.append(f"{dotted} imports {imported}")
    assert broken == []


def test_the_store_never_imports_grpc_or_protobuf() -> None:
    # The store knows nothing of the wire: a backend is used by the server, never the reverse.
    offenders = []
    for dotted, path in modules():
        if layer_of(dotted) != "store":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )
            offenders += [f"{dotted}: {n}" for n in names if n.split(".")[0] in {"grpc", "google"}]
    assert offenders == []


def test_no_import_cycles_between_modules() -> None:
    # Module-level imports only: a cycle there fails depending on which module loads first.
    graph = {
        dotted: {
            i for i in our_imports(path, dotted, runtime_top_only=True)
            if i != dotted and _exists(i) and not dotted.startswith(i + ".")
        }
        for dotted, path in modules()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            # A package's __init__ re-exporting its own modules is not a cycle of layers.
            if len(component) > 1 and not _package_and_members(component):
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert cycles == []


def _package_and_members(component: list[str]) -> bool:
    packages = [
        c for c in component if (PACKAGE / Path(*c.split(".")[1:]) / "__init__.py").exists()
    ]
    return len(packages) == 1 and all(
        c == packages[0] or c.startswith(packages[0] + ".") for c in component
    )


def test_importing_the_client_loads_no_server_or_store_module() -> None:
    code = (
        "import sys, dspex_rx.client\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith(('dspex_rx.server', "
        "'dspex_rx.store'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []


def test_importing_the_package_loads_no_server_until_one_is_used() -> None:
    code = (
        "import sys, dspex_rx\n"
        "before = any(m.startswith('dspex_rx.server') for m in sys.modules)\n"
        "server_class = dspex_rx.Server\n"
        "after = any(m.startswith('dspex_rx.server') for m in sys.modules)\n"
        "print(before, after, server_class.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "True", "Server"]


@pytest.mark.parametrize("dotted,path", list(modules()), ids=lambda v: str(v))
def test_each_module_is_small_and_says_what_it_owns(dotted: str, path: Path) -> None:
    tree = ast.parse(path.read_text())
    docstring = ast.get_docstring(tree)
    assert docstring, f"{dotted} has no module docstring saying what it owns"
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{dotted} has {lines} lines"
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{dotted}.{node.name} has {size} lines"


def test_architecture_opens_with_the_tree_as_it_is() -> None:
    # The map users read first must be the code's: regenerate with tests/layers_tree.py.
    architecture = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    assert layers_tree.documented(architecture) == layers_tree.render()


# Guards: the split dropped names users import from the entry points (add_service for a
# program hosting the servicer, the store's result types, BUILTIN_MODULES); second review.
@pytest.mark.parametrize("module,names", [
    ("dspex_rx", ["connect", "SessionContext", "VariableCache", "Watch", "Proposal",
                  "BaseOptimizer", "SearchSpace", "Limits", "Server", "EmbeddedServer",
                  "VariableUpdate", "DspexError", "ConflictError", "TYPES"]),
    ("dspex_rx.server", ["VariablesService", "add_service", "serve", "Server", "EmbeddedServer",
                         "parse_request", "Malformed", "abort_with", "snapshot_to_pb",
                         "snapshot_from_pb", "import_report_to_pb", "rules_to_pb",
                         "MAX_MESSAGE_BYTES", "SERVICE_NAME", "grpc_options"]),
    ("dspex_rx.store", ["MemoryStore", "Session", "ClientLease", "HistoryPage",
                        "UpdateOutcome", "ImportOutcome", "VariableRecord", "VariableSpec",
                        "Backend", "MemoryBackend"]),
    ("dspex_rx.dspy", ["BUILTIN_MODULES", "VariableAwareOptimizer", "DSPyOptimizationBridge",
                       "ModuleVariableResolver"]),
])
def test_the_entry_points_export_what_users_import(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    assert [n for n in names if not hasattr(imported, n)] == []
