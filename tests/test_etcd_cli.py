"""`dspex-rx serve --storage etcd` as a user runs it: two replica processes over one etcd
member and prefix share one store (writes on one are read and watched, in order, on the
other; a CAS race between them has one winner; they elect one to take the writes, unless
started with --no-write-leader), a replica killed and started again serves
the state it had, and etcd endpoints with no etcd behind them stop the server at start with
a one-line reason.

Real-time loops are hang guards only: the replicas are other processes.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import etcd_service
import grpc
import pytest
import trio
from helpers import SCRIPT, eventually, until, wait_for_port

import dspex_rx
from dspex_rx.client.updates import VariableUpdate
from dspex_rx.etcd import leader_key
from dspex_rx.etcd_v3 import rpc_pb2, rpc_pb2_grpc

# A hang guard: a replica serves within a couple of seconds of starting.
START_GUARD = 30.0


class Replica:
    """One ``dspex-rx serve --storage etcd`` process in ``workdir``."""

    def __init__(self, workdir: Path, endpoints: str, prefix: str,
                 flags: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.endpoints = endpoints
        self.prefix = prefix
        self.flags = flags
        self.proc: subprocess.Popen[bytes] | None = None
        self.target = ""
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> Replica:
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        with open(self.workdir / "serve.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(SCRIPT), "serve", "--port", "0", "--port-file", str(port_file),
                 "--log-level", "warning", "--storage", "etcd",
                 "--etcd-endpoints", self.endpoints, "--etcd-prefix", self.prefix,
                 *self.flags],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        port = wait_for_port(self.proc, port_file, START_GUARD, lambda: f":\n{self.log()}")
        self.target = f"127.0.0.1:{port}"
        return self

    def kill(self) -> None:
        # SIGKILL: nothing flushed or closed on the way out.
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return (self.workdir / "serve.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def replicas(etcd_endpoint: str, tmp_path: Path) -> Iterator[list[Replica]]:
    """Two replicas, started, over the run's etcd member and a prefix of this test's own."""
    prefix = f"cli-{uuid.uuid4().hex[:12]}/"
    pair = [Replica(tmp_path / f"replica{n}", etcd_endpoint, prefix) for n in (1, 2)]
    try:
        for replica in pair:
            replica.start()
        yield pair
    finally:
        for replica in pair:
            replica.stop()


async def join(target: str, session_id: str, token: str) -> dspex_rx.SessionContext:
    """Join ``session_id`` on a replica once the replica has heard of it through etcd."""
    guard = time.monotonic() + START_GUARD  # a hang guard, not a timing assertion
    while True:
        session = dspex_rx.SessionContext(session_id, target, token=token, create=False)
        try:
            return await session.initialize()
        except dspex_rx.SessionNotFoundError:
            await session.close()
            assert time.monotonic() < guard, f"{target} never heard of {session_id}"
            await trio.sleep(0.01)  # polls another process; no timing is asserted


async def test_writes_on_one_replica_are_read_and_watched_in_order_on_the_other(
    replicas: list[Replica],
) -> None:
    one, two = replicas
    async with dspex_rx.connect(one.target, session_id="cli_shared") as writer:
        await writer.register_variable("step", "integer", 0)
        assert writer.token is not None
        reader = await join(two.target, "cli_shared", writer.token)
        try:
            seen: list[VariableUpdate] = []
            reader.observe("step").subscribe(seen.append)
            await until(lambda: bool(seen), "the watch on replica 2 began", START_GUARD)
            versions = [await writer.set_variable("step", k) for k in range(1, 21)]
            assert versions == list(range(2, 22))
            await until(lambda: bool(seen) and seen[-1].version == 21,
                        "the watcher on replica 2 saw the last write", START_GUARD)
            # Every write once, in version and revision order, each the value acknowledged.
            assert [(u.update_type, u.version, u.value) for u in seen] == [
                ("initial", 1, 0), *(("value_change", k + 1, k) for k in range(1, 21))]
            revisions = [u.revision for u in seen]
            assert revisions == sorted(set(revisions))
            read = await reader.get_variables(["step"], include_metadata=True)
            assert (read["step"]["value"], read["step"]["version"]) == (20, 21)
        finally:
            await reader.close()


async def test_a_cas_race_across_replicas_has_one_winner_and_one_conflict(
    replicas: list[Replica],
) -> None:
    one, two = replicas
    async with dspex_rx.connect(one.target, session_id="cli_race") as a:
        await a.register_variable("owner", "string", "nobody")
        assert a.token is not None
        b = await join(two.target, "cli_race", a.token)
        try:
            assert await b.get_variable("owner") == "nobody"
            outcomes: dict[str, object] = {}

            async def claim(session: dspex_rx.SessionContext, name: str) -> None:
                try:
                    outcomes[name] = await session.set_variable("owner", name,
                                                                expected_version=1)
                except dspex_rx.ConflictError as refused:
                    outcomes[name] = refused

            async with trio.open_nursery() as nursery:
                nursery.start_soon(claim, a, "a")
                nursery.start_soon(claim, b, "b")
            winners = [n for n, o in outcomes.items() if o == 2]
            losers = [n for n, o in outcomes.items() if isinstance(o, dspex_rx.ConflictError)]
            assert len(winners) == 1 and len(losers) == 1, outcomes

            async def both_agree() -> bool:
                return [await s.get_variable("owner", bypass_cache=True)
                        for s in (a, b)] == winners * 2
            await eventually(both_agree, "the replicas agreed on the winner", START_GUARD)
        finally:
            await b.close()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_a_replica_restarted_serves_the_state_it_had_and_what_it_missed(
    replicas: list[Replica], how: str,
) -> None:
    one, two = replicas
    async with dspex_rx.connect(two.target, session_id="cli_restart") as keeper:
        await keeper.register_variable("note", "string", "v1")
        assert keeper.token is not None
        first = await join(one.target, "cli_restart", keeper.token)
        try:
            assert await first.set_variable("note", "v2") == 2
        finally:
            await first.close()
        one.kill() if how == "sigkill" else one.stop()
        # Written while replica 1 is down: it must catch up from etcd when it comes back.
        assert await keeper.set_variable("note", "v3") == 3
        await trio.to_thread.run_sync(one.start)
        again = await join(one.target, "cli_restart", keeper.token)
        try:
            read = await again.get_variables(["note"], include_metadata=True)
            assert (read["note"]["value"], read["note"]["version"]) == ("v3", 3)
            history = await again.get_variable_history("note")
            assert [(e["version"], e["value"]) for e in history] == [
                (3, "v3"), (2, "v2"), (1, "v1")]
            assert await again.set_variable("note", "v4") == 4
        finally:
            await again.close()
        async def seen() -> bool:
            return await keeper.get_variable("note", bypass_cache=True) == "v4"
        await eventually(seen, "replica 2 saw replica 1's write", START_GUARD)


def leader_in_etcd(endpoint: str, prefix: str) -> str:
    """The address the replicas of ``prefix`` elected as write leader ("" for none)."""
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
        reply = kv.Range(rpc_pb2.RangeRequest(key=leader_key(prefix.encode())), timeout=10)
    return reply.kvs[0].value.decode() if reply.kvs else ""


async def test_serving_replicas_elect_one_of_them_to_take_the_writes(
    replicas: list[Replica], etcd_endpoint: str,
) -> None:
    one, two = replicas
    await until(lambda: leader_in_etcd(etcd_endpoint, one.prefix) != "",
                "the replicas elected a write leader", START_GUARD)
    leader = leader_in_etcd(etcd_endpoint, one.prefix)
    assert leader in {one.target, two.target}  # each advertises --host:--port
    follower = two if leader == one.target else one
    async with dspex_rx.connect(follower.target, session_id="cli_forward") as session:
        await session.register_variable("n", "integer", 0)
        assert [await session.set_variable("n", k) for k in (1, 2, 3)] == [2, 3, 4]
        assert await session.get_variable("n", bypass_cache=True) == 3
    # Stopped cleanly, the leader gives its key up at once: the other takes it.
    (one if leader == one.target else two).stop()
    await until(lambda: leader_in_etcd(etcd_endpoint, one.prefix) == follower.target,
                "the other replica took the writes over", START_GUARD)


async def test_the_leader_killed_mid_stream_loses_no_acknowledged_write_and_repeats_none(
    etcd_endpoint: str, tmp_path: Path,
) -> None:
    prefix = f"cli-{uuid.uuid4().hex[:12]}/"
    trio_ = [Replica(tmp_path / f"r{n}", etcd_endpoint, prefix) for n in range(3)]
    try:
        for replica in trio_:
            replica.start()
        await until(lambda: leader_in_etcd(etcd_endpoint, prefix) != "",
                    "the replicas elected a write leader", START_GUARD)
        leader = next(r for r in trio_ if r.target == leader_in_etcd(etcd_endpoint, prefix))
        a, b = [r for r in trio_ if r is not leader]
        async with dspex_rx.connect(a.target, session_id="cli_kill") as on_a:
            await on_a.register_variables(
                [{"name": n, "type": "integer", "initial_value": 0} for n in ("x", "y")])
            assert on_a.token is not None
            on_b = await join(b.target, "cli_kill", on_a.token)
            seen: list[VariableUpdate] = []
            on_b.observe("x").subscribe(seen.append)
            acked: dict[str, list[tuple[int, int]]] = {"x": [], "y": []}
            unknown: dict[str, list[int]] = {"x": [], "y": []}
            try:
                async def writer(session: dspex_rx.SessionContext, name: str) -> None:
                    for value in range(1, 61):
                        if value == 21 and name == "x":
                            leader.kill()  # mid-stream: SIGKILL, its lease left to expire
                        try:
                            acked[name].append(
                                (await session.set_variable(name, value), value))
                        except dspex_rx.StorageError:
                            # Sent when the leader died, or not: kept or not, never twice.
                            unknown[name].append(value)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(writer, on_a, "x")
                    nursery.start_soon(writer, on_b, "y")
                last = max(acked["x"])[0]
                await until(lambda: bool(seen) and seen[-1].version >= last,
                            "the watcher on b saw x's last write", START_GUARD)
                for name, session in (("x", on_a), ("y", on_b)):
                    history = await session.get_variable_history(name)
                    stored = sorted((e["version"], e["value"]) for e in history)
                    # Versions dense from 1, values increasing: nothing lost or repeated.
                    assert [v for v, _ in stored] == list(range(1, len(stored) + 1))
                    values = [value for _, value in stored]
                    assert values == sorted(set(values))
                    assert set(acked[name]) <= set(stored)
                    assert set(values) - {0} <= {v for _, v in acked[name]} | set(unknown[name])
                    assert len(unknown[name]) <= 2  # only what was in flight at the kill
                updates = [u for u in seen if u.update_type == "value_change"]
                assert [u.version for u in updates] == sorted({u.version for u in updates})
            finally:
                await on_b.close()
    finally:
        for replica in trio_:
            replica.stop()


async def test_a_replica_started_with_no_write_leader_never_stands(
    etcd_endpoint: str, tmp_path: Path,
) -> None:
    prefix = f"cli-{uuid.uuid4().hex[:12]}/"
    alone = Replica(tmp_path / "alone", etcd_endpoint, prefix, ("--no-write-leader",))
    try:
        alone.start()
        async with dspex_rx.connect(alone.target, session_id="cli_alone") as session:
            await session.register_variable("n", "integer", 0)
            assert await session.set_variable("n", 1) == 2
        assert leader_in_etcd(etcd_endpoint, prefix) == ""
    finally:
        alone.stop()


def serve_once(endpoints: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "serve", "--port", "0", "--port-file", str(tmp_path / "port"),
         "--storage", "etcd", "--etcd-endpoints", endpoints],
        capture_output=True, text=True, timeout=60,  # a hang guard
    )


def test_etcd_endpoints_with_nothing_listening_stop_serve_with_the_reason(
    tmp_path: Path,
) -> None:
    dead = [etcd_service.free_port(), etcd_service.free_port()]
    endpoints = ",".join(f"127.0.0.1:{port}" for port in dead)
    done = serve_once(endpoints, tmp_path)
    assert done.returncode == 2
    reason = done.stderr.splitlines()[-1]  # earlier lines may note settings etcd changed
    assert reason.startswith(f"dspex-rx serve: error: cannot read etcd at {endpoints}: "
                             "UNAVAILABLE: ")
    assert reason.endswith("Connection refused (is etcd up, with a quorum?)")
    assert not (tmp_path / "port").exists()  # it never served


def test_an_etcd_endpoint_that_never_answers_stops_serve_after_the_call_timeout(
    tmp_path: Path,
) -> None:
    # Accepts connections and says nothing: a hung etcd, or a firewall that drops.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        held: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            silent.settimeout(0.1)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):  # a poll of ``stop``
                    held.append(silent.accept()[0])

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        try:
            endpoint = f"127.0.0.1:{silent.getsockname()[1]}"
            done = serve_once(endpoint, tmp_path)
        finally:
            stop.set()
            acceptor.join()
            for conn in held:
                conn.close()
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"dspex-rx serve: error: cannot read etcd at {endpoint}: "
        "DEADLINE_EXCEEDED: Deadline Exceeded (is etcd up, with a quorum?)")
    assert not (tmp_path / "port").exists()
