"""README.md's own python snippets are run by the suite.

Every ```python block of README.md is run. A full program (it calls ``trio.run`` or
``asyncio.run`` itself) runs as-is in a subprocess with this venv's python; its
``print(...)  # expected`` comments must appear in its output. Any other block runs
in-process, under trio, in a small context declared below and picked by the block's first
line: the sessions it names (``session``, ``other``, ``owner``, ``admin``, ``guest``...),
the variables it assumes, helpers it leaves to the reader (``score_prompt``). Top-level
``await`` is compiled with ``ast.PyCF_ALLOW_TOP_LEVEL_AWAIT``. The README's address
``127.0.0.1:50051`` is the test's own server; a network LM is the loopback OpenAI stub.
A block with neither a runner nor a context fails: no snippet goes untested.
"""

from __future__ import annotations

import ast
import datetime
import inspect
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm loads

import pytest
import trio
import trio.testing
from openai_stub import OpenAIStub

import dspex_rx
from dspex_rx.server import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_TARGET = "127.0.0.1:50051"  # the address the README's snippets use
ADMIN_KEY = "readme-admin-key-0123456789abcdef0123"
LAST = "__readme_last__"  # the value of a block's last expression, for the checks


@dataclass
class Block:
    index: int
    code: str

    @property
    def first_line(self) -> str:
        return self.code.strip().splitlines()[0].strip()

    def __str__(self) -> str:
        return f"README block {self.index} ({self.first_line!r})"


def readme_blocks(text: str) -> list[Block]:
    """Every ```python block, in order (indented ones too, dedented)."""
    found = re.finditer(r"^( *)```python\n(.*?)^\1```", text, re.DOTALL | re.MULTILINE)
    blocks = []
    for index, match in enumerate(found):
        indent = len(match.group(1))
        lines = [line[indent:] for line in match.group(2).splitlines()]
        blocks.append(Block(index, "\n".join(lines) + "\n"))
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def is_program(block: Block) -> bool:
    """A full program: it starts its own event loop (``trio.run`` / ``asyncio.run``)."""
    tree = ast.parse(block.code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
            isinstance(node.func.value, ast.Name)
            and (node.func.value.id, node.func.attr) in (("trio", "run"), ("asyncio", "run"))
        ):
            return True
    return False


def promised_output(block: Block) -> list[str]:
    """What ``print(...)  # text`` lines promise to print."""
    return [m.group(1).strip() for m in re.finditer(r"^\s*print\(.*\)\s+#\s*(.+)$",
                                                    block.code, re.MULTILINE)]


def compile_block(block: Block) -> Any:
    """Compile with top-level await; the last expression's value lands in ``LAST``."""
    tree = compile(block.code, str(block), "exec",
                   flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        tree.body[-1] = ast.copy_location(
            ast.Assign(targets=[ast.Name(LAST, ast.Store())], value=last.value), last)
        ast.fix_missing_locations(tree)
    return compile(tree, str(block), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


async def run_block(block: Block, namespace: dict[str, Any]) -> None:
    result = eval(compile_block(block), namespace)
    if inspect.iscoroutine(result):
        await result


# ------------------------------------------------------------------------ the contexts


@dataclass
class Env:
    """What a context may use: the shared server, a stub LM server, a scratch dir."""

    server: EmbeddedServer
    stub: OpenAIStub
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    printed: list[Any] = field(default_factory=list)

    def recording_print(self, on_print: Callable[[Any], None] = lambda value: None) -> Any:
        def fake_print(*args: Any, **kwargs: Any) -> None:
            print(*args, **kwargs)
            self.printed.append(args[0] if len(args) == 1 else args)
            on_print(self.printed[-1])

        return fake_print


class AtTestServer:
    """``dspex_rx`` as the README's snippets see it: the README's address is our server."""

    def __init__(self, target: str) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(dspex_rx, name)

    def _map(self, target: str | None) -> str | None:
        return self._target if target == README_TARGET else target

    def connect(self, target: str | None = None, *args: Any, **kwargs: Any) -> Any:
        return dspex_rx.connect(self._map(target), *args, **kwargs)

    def SessionContext(
        self, session_id: str | None = None, target: str | None = None, **kwargs: Any
    ) -> dspex_rx.SessionContext:
        return dspex_rx.SessionContext(session_id, self._map(target), **kwargs)


Context = Callable[[Env], AbstractAsyncContextManager[dict[str, Any]]]


@asynccontextmanager
async def spec_form(env: Env) -> AsyncIterator[dict[str, Any]]:
    # Its own server: the block claims the id session_123.
    with EmbeddedServer() as own:
        ns: dict[str, Any] = {"dspex_rx": AtTestServer(own.target)}
        yield ns
        assert ns["session"].created and isinstance(ns["session"].token, str)


@asynccontextmanager
async def join_with_token(env: Env) -> AsyncIterator[dict[str, Any]]:
    with EmbeddedServer() as own:
        async with dspex_rx.connect(own.target, session_id="session_123") as first:
            await first.register_variable("temperature", "float", 0.7)
            ns: dict[str, Any] = {"dspex_rx": AtTestServer(own.target),
                                  "token_from_the_first_program": first.token}
            yield ns
            assert ns["other"].token == first.token and not ns["other"].created


@asynccontextmanager
async def watching(env: Env) -> AsyncIterator[dict[str, Any]]:
    async with dspex_rx.connect(env.server.target) as session:
        await session.register_variables([
            {"name": "temperature", "type": "float", "initial_value": 0.7},
            {"name": "progress", "type": "float", "initial_value": 0.0},
            {"name": "lr", "type": "float", "initial_value": 0.1},
            {"name": "wd", "type": "float", "initial_value": 0.0},
        ])
        seen_start, seen_end = trio.Event(), trio.Event()

        def on_print(value: Any) -> None:
            if value == 0.0:
                seen_start.set()
            if value == 100.0:
                seen_end.set()

        async def progress_writer() -> None:
            # The other program the watch waits for: writes progress once the watch has
            # shown the start, and ends the watch (deletes the variable) once it showed 100.
            await seen_start.wait()
            for step in range(1, 11):
                await session.set_variable("progress", step * 10.0)
                await trio.sleep(0.1)  # virtual time
            await seen_end.wait()
            await session.delete_variable("progress")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(progress_writer)
            yield {"session": session, "print": env.recording_print(on_print)}
        values = [v for v in env.printed if isinstance(v, float)]
        assert values[0] == 0.0 and values[-1] == 100.0 and values == sorted(values)


@asynccontextmanager
async def transactions(env: Env) -> AsyncIterator[dict[str, Any]]:
    async with dspex_rx.connect(env.server.target) as session:
        await session.register_variables([
            {"name": "counter", "type": "integer", "initial_value": 1},
            {"name": "lr", "type": "float", "initial_value": 0.5},
            {"name": "wd", "type": "float", "initial_value": 0.0},
            {"name": "base_temperature", "type": "float", "initial_value": 0.7},
            {"name": "style_modifier", "type": "float", "initial_value": 1.2},
            {"name": "temperature", "type": "float", "initial_value": 0.7},
        ])
        for count in range(2, 8):
            await session.set_variable("counter", count)  # counter at version 7
        for value in (0.4, 0.3):
            await session.set_variable("lr", value)  # lr at version 3
        for value in (0.8, 0.9, 1.0):
            await session.set_variable("temperature", value)
        ns = {"session": session}
        yield ns
        assert await session.get_variable("counter") == 8
        assert await session.get_variables(["lr", "wd"]) == {"lr": 0.1, "wd": 0.01}
        assert await session.get_variable("temperature") == 0.9  # version 3's value
        deps = await session.get_dependencies("effective_temperature")
        assert {d["name"] for d in deps} == {"base_temperature", "style_modifier"}


async def score_prompt(temperature: float) -> float:
    """The README leaves the scoring to the reader: best at 1.1."""
    return round(1.0 - abs(temperature - 1.1), 6)


@asynccontextmanager
async def reported_optimization(env: Env) -> AsyncIterator[dict[str, Any]]:
    async with dspex_rx.connect(env.server.target) as session:
        await session.register_variable("temperature", "float", 0.7,
                                        constraints={"min": 0.0, "max": 2.0})
        ns = {"session": session, "score_prompt": score_prompt, "print": env.recording_print()}
        yield ns
        status = ns["status"]
        assert status["optimization_id"] == ns["opt_id"] and status["state"] == "completed"
        n = status["iteration"]
        assert 1 <= n <= 25
        callback_lines = env.printed[:-1]  # then the status line
        assert [line[0] for line in callback_lines] == list(range(1, n + 1))
        scores = [await score_prompt(value) for _, value, _ in callback_lines]
        assert [quality for _, _, quality in callback_lines] == scores
        assert status["best_metrics"] == {"quality": max(q for _, _, q in callback_lines),
                                          "latency_ms": 850.0}
        assert isinstance(status["started_at"], datetime.datetime)
        assert env.printed[-1] == (status["best_value"], status["started_at"])


@asynccontextmanager
async def optimization(env: Env) -> AsyncIterator[dict[str, Any]]:
    async with dspex_rx.connect(env.server.target) as session:
        await session.register_variable("temperature", "float", 0.7,
                                        constraints={"min": 0.0, "max": 2.0})
        ns = {"session": session, "score_prompt": score_prompt}
        yield ns
        final = ns["final"]
        assert final["state"] == "completed" and final["optimization_id"] == ns["opt_id"]
        assert 1 <= final["iteration"] <= 25
        assert final["best_metrics"]["latency_ms"] == 850.0
        assert final["best_metrics"]["quality"] == await score_prompt(final["best_value"])


@asynccontextmanager
async def export_import(env: Env) -> AsyncIterator[dict[str, Any]]:
    async with dspex_rx.connect(env.server.target) as session, dspex_rx.connect(
        env.server.target
    ) as other:
        await session.register_variables([
            {"name": "model.name", "type": "string", "initial_value": "gpt-4o"},
            {"name": "model.temperature", "type": "float", "initial_value": 0.3},
            {"name": "batch_size", "type": "integer", "initial_value": 32},
        ])
        ns = {"session": session, "other": other, "print": env.recording_print()}
        yield ns
        assert await other.get_variables(["model.name", "model.temperature"]) == {
            "model.name": "gpt-4o", "model.temperature": 0.3}
        assert await other.get_variable("batch_size", default="absent") == "absent"
        assert [d["action"] for d in ns["report"]["details"]] == ["create", "create"]


@asynccontextmanager
async def dspy_block(env: Env) -> AsyncIterator[dict[str, Any]]:
    dspy = pytest.importorskip("dspy")
    from dspy_helpers import TRAIN, examples

    from dspex_rx.dspy import plain

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    # dspy.LM("openai/...") talks to the loopback stub, not to the network.
    env.monkeypatch.setenv("OPENAI_BASE_URL", env.stub.api_base)
    env.monkeypatch.setenv("OPENAI_API_BASE", env.stub.api_base)
    env.monkeypatch.setenv("OPENAI_API_KEY", "not-a-key")
    async with dspex_rx.connect(env.server.target) as session, dspex_rx.connect(
        env.server.target, session_id=session.session_id, token=session.token
    ) as other_connection:
        await session.register_variables([
            {"name": "temperature", "type": "float", "initial_value": 0.3,
             "constraints": {"min": 0.0, "max": 2.0}},
            {"name": "max_demos", "type": "integer", "initial_value": 2},
        ])
        ns = {"session": session, "other_connection": other_connection,
              "trainset": examples(TRAIN), "devset": examples(TRAIN[:2]),
              "print": env.recording_print()}
        # The program's configured LM (README: dspy.context or dspy.configure).
        lm = dspy.LM("openai/gpt-4o-mini", cache=False, num_retries=0)
        with dspy.context(lm=lm):
            yield ns
        sky = [r for r in env.stub.requests if "Why is the sky blue?" in str(r)]
        assert sky[0]["temperature"] == 0.2  # the bound variable's value reached the LM
        assert await session.get_variable("dspy.score") == 100.0
        assert await session.get_variable("dspy.demos.predict") == plain(
            ns["compiled"].predict.demos)
        assert env.printed[-1][0] == "ChainOfThought"


@asynccontextmanager
async def access_rules(env: Env) -> AsyncIterator[dict[str, Any]]:
    with EmbeddedServer(principals={"admin_*": ADMIN_KEY}) as own:
        async with dspex_rx.connect(own.target) as owner, dspex_rx.connect(
            own.target, session_id="admin_1", principal_key=ADMIN_KEY
        ) as admin, dspex_rx.connect(own.target) as guest:
            ns: dict[str, Any] = {"owner": owner, "admin": admin, "guest": guest}
            yield ns
            # The rules are gone: the guest cannot see the variable, so False, no error.
            assert ns[LAST] is False
            with pytest.raises(KeyError):
                await admin.get_variable(ns["var_id"], bypass_cache=True)


@asynccontextmanager
async def tls_connect(env: Env) -> AsyncIterator[dict[str, Any]]:
    import trustme

    env.monkeypatch.chdir(env.tmp_path)
    trustme.CA().cert_pem.write_to_path("ca.pem")
    ns = {"dspex_rx": dspex_rx}
    yield ns
    assert isinstance(ns[LAST], AbstractAsyncContextManager)  # nothing connects until used


@asynccontextmanager
async def durable_sessions(env: Env) -> AsyncIterator[dict[str, Any]]:
    # A durable server of its own (the README's is `dspex-rx serve`, durable by default).
    with EmbeddedServer(data_dir=env.tmp_path / "data") as own:
        ns = {"dspex_rx": AtTestServer(own.target), "print": env.recording_print()}
        yield ns
        assert env.printed == [0.02] and not ns["later"].created


# Blocks that are not full programs, by their first line.
CONTEXTS: dict[str, Context] = {
    'session = dspex_rx.SessionContext("session_123", "127.0.0.1:50051")': spec_form,
    'async with dspex_rx.connect("127.0.0.1:50051", session_id="session_123",':
        join_with_token,
    "from reactivex import operators as ops": watching,
    'await session.set_variable("counter", 8, expected_version=7)     # ConflictError if '
    "not at 7": transactions,
    "opt_id = await session.start_optimization(": reported_optimization,
    "async def evaluate(temperature):              # sync functions run in a worker thread":
        optimization,
    'data = await session.export_variables("yaml", include_history=True, '
    'filter_pattern=r".*model.*")': export_import,
    "import dspy": dspy_block,
    "import time": access_rules,
    'async with dspex_rx.connect("127.0.0.1:50051", session_id="run_1") as first:':
        durable_sessions,
    'dspex_rx.connect("db.example:50051", ca_cert="ca.pem")   # or tls=True: system roots':
        tls_connect,
}


# Blocks whose context moves time (throttles, debounces): they run on virtual time.
TIMED = {"from reactivex import operators as ops"}


def test_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 12


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.first_line not in TIMED],
                         ids=lambda b: f"block{b.index}")
async def test_readme_block_runs(
    block: Block, server: EmbeddedServer, stub: OpenAIStub, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await run_readme_block(block, Env(server, stub, tmp_path, monkeypatch))


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.first_line in TIMED],
                         ids=lambda b: f"block{b.index}")
async def test_readme_timed_block_runs(
    block: Block, server: EmbeddedServer, stub: OpenAIStub, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock,
) -> None:
    await run_readme_block(block, Env(server, stub, tmp_path, monkeypatch))


async def run_readme_block(block: Block, env: Env) -> None:
    if is_program(block):
        script = env.tmp_path / "block.py"
        script.write_text(block.code, encoding="utf-8")
        environ = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, str(script)], cwd=env.tmp_path, env=environ, capture_output=True,
            text=True, timeout=120))
        assert done.returncode == 0, f"{block} failed:\n{done.stderr}"
        for promised in promised_output(block):
            assert promised in done.stdout, f"{block} did not print {promised!r}"
        return
    context = CONTEXTS.get(block.first_line)
    if context is None:
        pytest.fail(f"{block} has no runner: give it a context in tests/test_readme.py "
                    "(or make it a full program)")
    async with context(env) as namespace:
        await run_block(block, namespace)
