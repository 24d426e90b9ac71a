"""Issue #6, "who is calling": session tokens, the server's auth modes, TLS and the bind
rule.

Raw calls go through a plain grpc.aio stub (``variables_pb2_grpc``) on its own asyncio
loop in a worker thread, so they carry exactly the metadata a test gives them and no
client code helps. What the store holds afterwards is read on the server's loop
(``EmbeddedServer.call``).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
import trio.testing
import trustme
from dns_service import DnsService
from helpers import SCRIPT, beat_until, cli_server, settle

import dspex_rx
from dspex_rx import AuthenticationError, ServerUnavailableError, SessionContext
from dspex_rx.errors import InvalidValueError, SessionNotFoundError, error_from_kind
from dspex_rx.server import EmbeddedServer, Server
from dspex_rx.store import MemoryStore
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.v1 import variables_pb2_grpc as pb_grpc
from dspex_rx.wire import codec
from dspex_rx.wire.security import SESSION_TOKEN_KEY, check_bind, is_loopback, token_metadata

Raw = Callable[[pb_grpc.VariablesStub], Awaitable[Any]]


# ---------------------------------------------------------------- helpers


def _run_raw(target: str, fn: Raw, credentials: grpc.ChannelCredentials | None = None) -> Any:
    async def main() -> Any:
        channel = (
            grpc.aio.secure_channel(target, credentials)
            if credentials is not None else grpc.aio.insecure_channel(target)
        )
        async with channel:
            return await fn(pb_grpc.VariablesStub(channel))

    return asyncio.run(main())


async def raw(target: str, fn: Raw) -> Any:
    """Run ``fn(stub)`` on a fresh grpc.aio channel (own loop, worker thread)."""
    return await trio.to_thread.run_sync(_run_raw, target, fn)


def _refusal(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    trailing = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}
    return exc.code(), exc.details() or "", trailing


def _state(server: EmbeddedServer, session_id: str) -> tuple[int, dict[str, Any], int]:
    """(revision, name -> value, attached clients) of a session, read on the server."""

    def read() -> tuple[int, dict[str, Any], int]:
        session = server.store.session(session_id)
        values = {r.name: r.value for r in session.variables.values()}
        return session.revision, values, len(session.clients)

    return server.call(read)


def _assert_quiet(exc: BaseException, *secrets: str | None) -> None:
    """The refusal says why, and carries no token."""
    text = f"{exc} {exc!r}"
    for secret in secrets:
        if secret:
            assert secret not in text


@pytest.fixture
async def other(server: EmbeddedServer) -> AsyncIterator[SessionContext]:
    """A second, unrelated session on the same server."""
    async with dspex_rx.connect(server.target) as s:
        yield s


# ---------------------------------------------------------------- tokens, by the client


async def test_a_new_session_gets_a_long_random_token(
    session: SessionContext, other: SessionContext
) -> None:
    assert session.created and isinstance(session.token, str)
    assert len(session.token) >= 43  # secrets.token_urlsafe(32)
    assert other.token is not None and other.token != session.token


async def test_a_second_connection_with_the_token_joins_and_sees_the_variables(
    server: EmbeddedServer, session: SessionContext
) -> None:
    await session.register_variable("temperature", "float", 0.7)
    async with dspex_rx.connect(
        server.target, session_id=session.session_id, token=session.token
    ) as joined:
        assert not joined.created
        assert joined.token == session.token
        assert await joined.get_variable("temperature") == 0.7
        watch = await joined.watch_variable("temperature")
        await session.set_variable("temperature", 0.9)
        await settle(joined)
        values = [u.value for u in [await watch.__anext__(), await watch.__anext__()]]
        assert values == [0.7, 0.9]
        await joined.set_variable("temperature", 1.1)
        assert await session.get_variable("temperature", bypass_cache=True) == 1.1


async def test_joining_without_a_token_is_refused_and_attaches_nothing(
    server: EmbeddedServer, session: SessionContext
) -> None:
    await session.register_variable("secret_plan", "string", "launch at dawn")
    before = _state(server, session.session_id)
    with pytest.raises(AuthenticationError) as info:
        async with dspex_rx.connect(server.target, session_id=session.session_id):
            pass
    assert isinstance(info.value, PermissionError)
    assert str(info.value) == (
        f"session {session.session_id!r} needs its session token, and none was presented"
    )
    assert "launch at dawn" not in str(info.value)
    _assert_quiet(info.value, session.token)
    assert _state(server, session.session_id) == before  # no client attached


async def test_joining_with_a_wrong_token_is_refused(
    server: EmbeddedServer, session: SessionContext
) -> None:
    wrong = "A" * 43
    before = _state(server, session.session_id)
    with pytest.raises(AuthenticationError, match="is not the token of session") as info:
        async with dspex_rx.connect(server.target, session_id=session.session_id, token=wrong):
            pass
    _assert_quiet(info.value, wrong, session.token)
    assert _state(server, session.session_id) == before


async def test_joining_with_another_sessions_token_is_refused(
    server: EmbeddedServer, session: SessionContext, other: SessionContext
) -> None:
    with pytest.raises(PermissionError, match="is not the token of session") as info:
        async with dspex_rx.connect(
            server.target, session_id=session.session_id, token=other.token
        ):
            pass
    assert isinstance(info.value, AuthenticationError)
    _assert_quiet(info.value, other.token, session.token)


async def test_a_token_that_is_not_a_string_is_refused_before_any_call() -> None:
    with pytest.raises(ValueError, match="token must be a string"):
        SessionContext("s", "127.0.0.1:1", token=b"bytes")  # type: ignore[arg-type]


async def test_the_embedded_server_needs_nothing_from_the_user() -> None:
    async with dspex_rx.connect() as s:
        assert s.token
        await s.register_variable("x", "integer", 1)
        assert await s.get_variable("x", bypass_cache=True) == 1
        watch = await s.watch_variable("x")
        assert (await watch.__anext__()).value == 1


# ---------------------------------------------------------------- raw calls, no client


async def test_raw_calls_without_metadata_are_unauthenticated_and_write_nothing(
    server: EmbeddedServer, session: SessionContext
) -> None:
    await session.register_variable("x", "string", "launch at dawn")
    sid = session.session_id
    before = _state(server, sid)

    async def calls(stub: pb_grpc.VariablesStub) -> list[Any]:
        out = []
        for call in (
            lambda: stub.GetVariable(pb.GetVariableRequest(session_id=sid, ref="x")),
            lambda: stub.SetVariable(pb.SetVariableRequest(
                session_id=sid, ref="x", value=codec.encode("abort"))),
        ):
            try:
                await call()
                out.append(None)
            except grpc.aio.AioRpcError as exc:
                out.append(_refusal(exc))
        return out

    got = await raw(server.target, calls)
    for code, details, trailing in got:
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert details.endswith("needs its session token, and none was presented")
        assert trailing["dspex-error-kind"] == "unauthenticated"
        assert "launch" not in details and "abort" not in details
    assert _state(server, sid) == before
    assert await session.get_variable("x", bypass_cache=True) == "launch at dawn"


# Calls is a stream of such RPCs, each checked as its unary RPC (test_calls_stream.py).
_OPEN = {"InitializeSession", "Echo", "Session", "Calls"}
_SCOPED = [m.name for m in pb.DESCRIPTOR.services_by_name["Variables"].methods
           if m.name not in _OPEN]


async def test_every_session_scoped_rpc_refuses_a_missing_or_wrong_token(
    server: EmbeddedServer, session: SessionContext, other: SessionContext
) -> None:
    await session.register_variable("x", "integer", 1)
    sid = session.session_id
    before = _state(server, sid)
    service = pb.DESCRIPTOR.services_by_name["Variables"]

    async def calls(stub: pb_grpc.VariablesStub) -> dict[tuple[str, str], Any]:
        out: dict[tuple[str, str], Any] = {}
        for name in _SCOPED:
            method = service.methods_by_name[name]
            request = getattr(pb, method.input_type.name)(session_id=sid)
            for label, metadata in (
                ("none", ()), ("wrong", token_metadata("B" * 43)),
                ("other", token_metadata(other.token)),
            ):
                try:
                    await getattr(stub, name)(request, metadata=metadata, timeout=10)
                    out[name, label] = "answered"
                except grpc.aio.AioRpcError as exc:
                    out[name, label] = exc.code()
        return out

    got = await raw(server.target, calls)
    assert len(got) == 3 * len(_SCOPED) and len(_SCOPED) >= 20
    assert {key: code for key, code in got.items()
            if code != grpc.StatusCode.UNAUTHENTICATED} == {}
    assert _state(server, sid) == before  # nothing written, no client dropped


async def test_a_raw_session_stream_without_the_token_is_refused(
    server: EmbeddedServer, session: SessionContext, other: SessionContext
) -> None:
    await session.register_variable("x", "integer", 1)

    async def open_stream(stub: pb_grpc.VariablesStub, metadata: Any) -> Any:
        call = stub.Session(metadata=metadata)
        await call.write(spb.ClientMessage(open=spb.OpenStream(session_id=session.session_id)))
        try:
            message = await call.read()
        except grpc.aio.AioRpcError as exc:
            return _refusal(exc)
        call.cancel()
        return message

    for metadata in ((), token_metadata(other.token)):
        code, details, trailing = await raw(
            server.target, lambda stub, m=metadata: open_stream(stub, m)
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "session token" in details and trailing["dspex-error-kind"] == "unauthenticated"
    message = await raw(
        server.target, lambda stub: open_stream(stub, token_metadata(session.token))
    )
    assert message.WhichOneof("control") == "opened"


async def test_spoofing_another_sessions_id_with_your_own_token_fails(
    server: EmbeddedServer, session: SessionContext, other: SessionContext
) -> None:
    await session.register_variable("x", "integer", 1)
    victim = session.session_id
    before = _state(server, victim)

    async def spoof(stub: pb_grpc.VariablesStub) -> list[Any]:
        mine = token_metadata(other.token)
        out = []
        for call in (
            lambda: stub.SetVariable(pb.SetVariableRequest(
                session_id=victim, ref="x", value=codec.encode(2)), metadata=mine),
            lambda: stub.CloseSession(pb.CloseSessionRequest(
                session_id=victim, client_id=session._client_id), metadata=mine),
            lambda: stub.InitializeSession(pb.InitializeSessionRequest(
                session_id=victim), metadata=mine),
        ):
            try:
                await call()
                out.append("answered")
            except grpc.aio.AioRpcError as exc:
                out.append(exc.code())
        return out

    assert await raw(server.target, spoof) == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert _state(server, victim) == before
    # The spoofer's own session is untouched and still works with its token.
    await other.register_variable("mine", "integer", 5)
    assert await other.get_variable("mine", bypass_cache=True) == 5


async def test_an_unknown_session_is_still_not_found(server: EmbeddedServer) -> None:
    async def call(stub: pb_grpc.VariablesStub) -> Any:
        try:
            await stub.GetVariable(pb.GetVariableRequest(session_id="nobody_here", ref="x"))
        except grpc.aio.AioRpcError as exc:
            return exc.code()

    assert await raw(server.target, call) == grpc.StatusCode.NOT_FOUND


async def test_health_and_echo_need_no_token(server: EmbeddedServer) -> None:
    async def call(stub: pb_grpc.VariablesStub) -> bytes:
        return (await stub.Echo(pb.EchoRequest(payload=b"hi"))).payload

    assert await raw(server.target, call) == b"hi"


# ---------------------------------------------------------------- stream reconnect


async def test_every_stream_open_and_reopen_sends_the_token() -> None:
    # A server restart breaks the stream; the reopened stream must present the token, or
    # the restarted server (same store, token auth) refuses it and the watch dies.
    store = MemoryStore()
    first = EmbeddedServer(store=store)
    first.start()
    port = int(first.target.rsplit(":", 1)[1])
    second = EmbeddedServer(port=port, store=store)
    try:
        async with dspex_rx.connect(first.target, ttl_seconds=600) as session:
            transport = session._transport
            real_open = transport.open_stream
            sent: list[tuple[tuple[str, str], ...]] = []

            async def recording_open(path: str, response_type: Any, metadata: Any = (),
                                     listener: Any = None) -> Any:
                sent.append(tuple(metadata))
                return await real_open(path, response_type, metadata=metadata,
                                       listener=listener)

            transport.open_stream = recording_open
            await session.register_variable("x", "integer", 0)
            watch = await session.watch_variable("x")
            assert (await watch.__anext__()).value == 0
            await trio.to_thread.run_sync(first.stop)
            store.set(session.session_id, "x", 1, actor="offline")
            await trio.to_thread.run_sync(second.start)
            with trio.fail_after(30):  # a bound, not a timing assertion
                assert (await watch.__anext__()).value == 1
            assert session._hub is not None and session._hub.reconnects >= 1
            assert len(sent) >= 2
            assert set(sent) == {((SESSION_TOKEN_KEY, session.token),)}
    finally:
        await trio.to_thread.run_sync(second.stop)
        await trio.to_thread.run_sync(first.stop)


async def test_a_session_id_taken_over_by_a_new_session_is_reported_lost(
    server: EmbeddedServer, mock_clock: trio.testing.MockClock
) -> None:
    # The session ended (its only client's lease lapsed) and someone made a new session
    # of the same id: our token is refused there, which means our session is gone.
    session = await SessionContext("taken_over", server.target, ttl_seconds=30.0).initialize()
    try:
        old_token = session.token

        def replace() -> str:
            server.store.close_session("taken_over", session._client_id)
            new, _, created = server.store.initialize_session("taken_over")
            assert created
            return new.token

        new_token = server.call(replace)
        assert new_token != old_token
        await beat_until(session, mock_clock, lambda: session.lost)
        # A lost client refuses calls for the session itself (a later session of the id
        # might accept its token), saying why without a token in the message.
        with pytest.raises(SessionNotFoundError, match="'taken_over' is lost") as info:
            await session.get_variable("anything", bypass_cache=True)
        _assert_quiet(info.value, old_token, new_token)
        assert session.reattached == 0
    finally:
        await session.close()
    assert "taken_over" in server.call(server.store.session_ids)  # not ours to close


# ---------------------------------------------------------------- auth="none"


async def test_auth_none_issues_tokens_but_checks_none() -> None:
    with EmbeddedServer(auth="none") as server:
        async with dspex_rx.connect(server.target) as owner:
            assert owner.token
            await owner.register_variable("x", "integer", 1)
            async with dspex_rx.connect(server.target, session_id=owner.session_id) as tool:
                assert not tool.created
                assert tool.token is None  # not handed out to who did not prove it
                assert await tool.get_variable("x") == 1

            async with dspex_rx.connect(
                server.target, session_id=owner.session_id, token=owner.token
            ) as proven:
                assert proven.token == owner.token

            async def call(stub: pb_grpc.VariablesStub) -> int:
                reply = await stub.GetVariable(
                    pb.GetVariableRequest(session_id=owner.session_id, ref="x")
                )
                return int(codec.decode(reply.variable.value))

            assert await raw(server.target, call) == 1


def test_an_unknown_auth_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="auth must be one of 'token', 'none'"):
        Server(port=0, auth="maybe")


# ---------------------------------------------------------------- store


def test_the_store_keeps_and_checks_the_token() -> None:
    store = MemoryStore()
    session, _, created = store.initialize_session("s")
    assert created and len(session.token) >= 43
    assert session.token not in repr(session)
    assert store.authenticate("s", session.token) is session
    with pytest.raises(AuthenticationError, match="none was presented"):
        store.authenticate("s", "")
    with pytest.raises(AuthenticationError, match="not the token"):
        store.authenticate("s", session.token[:-1] + "é")
    with pytest.raises(SessionNotFoundError):
        store.authenticate("t", session.token)
    with pytest.raises(AuthenticationError):
        store.initialize_session("s", token="nope", require_token=True)
    assert len(session.clients) == 1
    store.initialize_session("s", token=session.token, require_token=True)
    store.initialize_session("s")  # in-process callers that ask for no check
    assert len(session.clients) == 3


def test_the_error_kind_round_trips() -> None:
    exc = error_from_kind("unauthenticated", "no token")
    assert isinstance(exc, AuthenticationError) and isinstance(exc, PermissionError)
    from dspex_rx.wire.convert import KIND_BY_STATUS, STATUS_BY_KIND

    assert STATUS_BY_KIND["unauthenticated"] == grpc.StatusCode.UNAUTHENTICATED
    assert KIND_BY_STATUS[grpc.StatusCode.UNAUTHENTICATED] == "unauthenticated"


# ---------------------------------------------------------------- bind rule


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost",
                                  "LOCALHOST", "::ffff:127.0.0.1"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "", "10.0.0.1", "192.168.1.5",
                                  "example.org", "localhost.example.org", "128.0.0.1"])
def test_network_hosts(host: str) -> None:
    assert not is_loopback(host)


def test_a_non_loopback_bind_without_tls_is_refused_with_the_flags_named() -> None:
    with pytest.raises(InvalidValueError) as info:
        Server(host="0.0.0.0", port=0)
    message = str(info.value)
    assert "'0.0.0.0'" in message and "without TLS" in message
    for flag in ("--tls-cert", "--tls-key", "--insecure", "insecure=True"):
        assert flag in message


def test_a_non_loopback_bind_with_auth_none_is_refused_even_with_tls(
    tls_files: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match="without token authentication"):
        Server(host="0.0.0.0", port=0, auth="none", tls_cert=tls_files["cert"],
               tls_key=tls_files["key"])
    Server(host="0.0.0.0", port=0, tls_cert=tls_files["cert"], tls_key=tls_files["key"])
    check_bind("192.168.1.5", "none", tls=False, insecure=True)


def test_insecure_lets_a_server_bind_all_interfaces() -> None:
    server = EmbeddedServer(host="0.0.0.0", port=0, insecure=True)
    server.start()
    try:
        assert server._server.port > 0
    finally:
        server.stop()


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A server certificate for 127.0.0.1, localhost and dspex.test, as PEM bytes and
    files."""
    cert = ca.issue_cert("127.0.0.1", "localhost", "dspex.test")
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path, ca_path = (folder / n for n in ("server.pem", "server.key", "ca.pem"))
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_path.write_bytes(cert.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_path))
    return {
        "cert": cert_path.read_bytes(), "key": key_path.read_bytes(),
        "ca": ca.cert_pem.bytes(), "cert_path": str(cert_path), "key_path": str(key_path),
        "ca_path": str(ca_path),
    }


@pytest.fixture(scope="module")
def tls_server(tls_files: dict[str, Any]) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tls_cert=tls_files["cert_path"], tls_key=tls_files["key"]) as server:
        yield server


async def test_tls_client_with_the_ca_works_and_joins_with_the_token(
    tls_server: EmbeddedServer, tls_files: dict[str, Any]
) -> None:
    assert tls_server._server.tls
    async with dspex_rx.connect(tls_server.target, ca_cert=tls_files["ca"]) as a:
        assert a.tls
        await a.register_variable("x", "integer", 1)
        async with dspex_rx.connect(
            tls_server.target, session_id=a.session_id, token=a.token,
            ca_cert=tls_files["ca_path"],
        ) as b:
            watch = await b.watch_variable("x")
            await a.set_variable("x", 2)
            assert [(await watch.__anext__()).value, (await watch.__anext__()).value] == [1, 2]
        with pytest.raises(AuthenticationError):
            async with dspex_rx.connect(tls_server.target, session_id=a.session_id,
                                        ca_cert=tls_files["ca"]):
                pass


async def test_tls_server_name_override(
    tls_server: EmbeddedServer, tls_files: dict[str, Any]
) -> None:
    # The certificate names dspex.test too; the override makes the client check that name.
    async with dspex_rx.connect(tls_server.target, tls=True, ca_cert=tls_files["ca"],
                                tls_server_name="dspex.test") as s:
        assert await s.ping(b"ok") == b"ok"
    with pytest.raises(ServerUnavailableError, match="does not name the host") as info:
        async with dspex_rx.connect(tls_server.target, ca_cert=tls_files["ca"],
                                    tls_server_name="elsewhere.test", timeout=10):
            pass
    assert info.value.__cause__.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[union-attr]



async def test_through_a_dns_target_tls_checks_the_name_it_resolves(
    tls_server: EmbeddedServer, tls_files: dict[str, Any]
) -> None:
    # dns://server/name:port is gRPC's: the certificate must hold the name, not the server.
    port = tls_server.target.rpartition(":")[2]
    with DnsService({"dspex.test": ["127.0.0.1"], "elsewhere.test": ["127.0.0.1"]}) as dns:
        async with dspex_rx.connect(f"dns://{dns.address}/dspex.test:{port}",
                                    ca_cert=tls_files["ca"]) as s:
            assert await s.ping(b"ok") == b"ok"
        with pytest.raises(ServerUnavailableError, match="does not name the host"):
            async with dspex_rx.connect(f"dns://{dns.address}/elsewhere.test:{port}",
                                        ca_cert=tls_files["ca"], timeout=10):
                pass
        assert {name for name, _ in dns.queries} == {"dspex.test", "elsewhere.test"}

async def test_a_plaintext_client_cannot_talk_to_a_tls_server(
    tls_server: EmbeddedServer,
) -> None:
    with pytest.raises(ServerUnavailableError, match="does it serve TLS") as info:
        async with dspex_rx.connect(tls_server.target, timeout=10):
            pass
    assert info.value.__cause__.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[union-attr]


async def test_a_tls_client_trusting_another_ca_is_refused(
    tls_server: EmbeddedServer,
) -> None:
    stranger = trustme.CA()
    with pytest.raises(ServerUnavailableError, match="not trusted") as info:
        async with dspex_rx.connect(tls_server.target, ca_cert=stranger.cert_pem.bytes(),
                                    timeout=10):
            pass
    assert info.value.__cause__.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[union-attr]


async def test_tls_with_the_system_roots_does_not_trust_a_private_ca(
    tls_server: EmbeddedServer,
) -> None:
    with pytest.raises(ServerUnavailableError, match="not trusted") as info:
        async with dspex_rx.connect(tls_server.target, tls=True, timeout=10):
            pass
    assert info.value.__cause__.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[union-attr]


def test_tls_material_is_checked_at_construction(
    tls_files: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        Server(port=0, tls_cert=tls_files["cert"])
    with pytest.raises(ValueError, match="cannot read tls_key from"):
        Server(port=0, tls_cert=tls_files["cert"], tls_key=str(tmp_path / "missing.key"))
    with pytest.raises(ValueError, match="tls_cert is empty"):
        Server(port=0, tls_cert=b"  ", tls_key=tls_files["key"])


async def test_tls_needs_a_target() -> None:
    with pytest.raises(ValueError, match="need a target"):
        async with dspex_rx.connect(tls=True):
            pass


# ---------------------------------------------------------------- CLI


def test_cli_help_lists_the_security_flags() -> None:
    out = subprocess.run([str(SCRIPT), "serve", "--help"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    for flag in ("--auth {token,none}", "--insecure", "--tls-cert PATH", "--tls-key PATH"):
        assert flag in out
    assert "non-loopback" in out


def test_cli_refuses_a_network_bind_without_tls() -> None:
    done = subprocess.run([str(SCRIPT), "serve", "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "refusing to serve on non-loopback address '0.0.0.0'" in done.stderr
    assert "--insecure" in done.stderr
    half = subprocess.run([str(SCRIPT), "serve", "--port", "0", "--tls-cert", "x.pem"],
                          capture_output=True, text=True, timeout=60)
    assert half.returncode == 2 and "--tls-cert and --tls-key go together" in half.stderr


async def test_cli_serves_tls(tls_files: dict[str, Any], tmp_path: Path) -> None:
    async with cli_server(tmp_path, "--tls-cert", tls_files["cert_path"],  # noqa: SIM117
                          "--tls-key", tls_files["key_path"]) as target:
        async with dspex_rx.connect(target, ca_cert=tls_files["ca_path"]) as s:
            await s.register_variable("x", "integer", 3)
            assert await s.get_variable("x", bypass_cache=True) == 3


def test_issued_tokens_never_start_with_a_dash() -> None:
    # Guards: 1 token in 64 started with "-", and `dspex-rx ui --token <it>` was refused as
    # a missing argument (argparse took it for an option); found by a flaky test_web_cli.
    from dspex_rx.store import MemoryStore

    store = MemoryStore()
    tokens = [store.initialize_session()[0].token for _ in range(400)]
    assert len(set(tokens)) == 400
    assert all(t.startswith("tok_") and len(t) == 47 for t in tokens)
