"""Rate limits (issue #17): token buckets per peer address and per session id for
``InitializeSession`` and failed authentications (a wrong token, a wrong principal key);
over a limit, RESOURCE_EXHAUSTED with a retry-after, which the client raises as
``RateLimitedError``.

Buckets run on a fake clock (``now``), both alone and inside a real server (the service's
``guard`` replaced by one on the fake clock), so refill is tested in virtual time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from helpers import cli_server
from peers import from_peer, initialize, raw

import dspex_rx
from dspex_rx import Limits, RateLimitedError
from dspex_rx.client.watch_hub import _retryable
from dspex_rx.errors import ResourceExhaustedError
from dspex_rx.server import EmbeddedServer
from dspex_rx.server.ratelimit import MAX_KEYS, Buckets, Guard, peer_address
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire.convert import map_rpc_error
from dspex_rx.wire.security import PRINCIPAL_KEY_KEY, SESSION_TOKEN_KEY

ADMIN_KEY = "the-admin-key-0123456789abcdef"


class Now:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


def _guarded(server: EmbeddedServer, now: Now) -> Guard:
    """Put a guard on the fake clock into the running server; returns it."""
    guard = Guard(server.service.limits, clock=now)

    def install() -> None:
        server.service.guard = guard

    server.call(install)
    return guard


def _codes(answers: list[object]) -> list[str]:
    return ["ok" if isinstance(a, pb.InitializeSessionResponse) else a[0].name  # type: ignore[index]
            for a in answers]


# ---------------------------------------------------------------- buckets alone


def test_a_bucket_allows_its_burst_then_one_token_per_refill_interval() -> None:
    now = Now()
    buckets = Buckets(60, now)  # 60 a minute: one a second
    assert [buckets.take("k") for _ in range(61)] == [True] * 60 + [False]
    assert buckets.wait("k") == pytest.approx(1.0)
    now.now += 0.5
    assert not buckets.take("k") and buckets.wait("k") == pytest.approx(0.5)
    now.now += 0.5
    assert [buckets.take("k") for _ in range(2)] == [True, False]
    now.now += 3600  # refills to the burst, never beyond
    assert sum(buckets.take("k") for _ in range(100)) == 60


def test_a_clock_stepping_back_refills_nothing() -> None:
    now = Now()
    buckets = Buckets(2, now)
    buckets.spend("k")
    buckets.spend("k")
    now.now -= 1000
    assert buckets.tokens("k") == 0.0 and not buckets.take("k")


def test_buckets_forget_full_ones_first_past_max_keys() -> None:
    now = Now()
    buckets = Buckets(10, now)
    buckets.spend("drained")
    for i in range(MAX_KEYS):
        buckets._set(f"full{i}", 10.0)
    # One over the bound: every full bucket goes, the drained one stays drained.
    assert len(buckets) == 1 and buckets.tokens("drained") == 9.0


def test_past_max_keys_of_drained_buckets_the_oldest_go_down_to_three_quarters() -> None:
    buckets = Buckets(10, Now())
    for i in range(MAX_KEYS + 1):
        buckets.spend(f"k{i}")
    assert len(buckets) == MAX_KEYS - MAX_KEYS // 4
    assert buckets.tokens("k0") == 10.0  # forgotten: the oldest
    assert buckets.tokens(f"k{MAX_KEYS}") == 9.0  # kept: the newest
    buckets.spend("one more")  # far below the bound now: no scan, nothing forgotten
    assert len(buckets) == MAX_KEYS - MAX_KEYS // 4 + 1


@pytest.mark.parametrize(("peer", "address"), [
    ("ipv4:192.0.2.7:40001", "192.0.2.7"),
    ("ipv4:192.0.2.7:40002", "192.0.2.7"),
    ("ipv6:[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"),
    ("ipv6:[2001:db8:1:2:ffff::9]:80", "2001:db8:1:2::/64"),
    ("ipv6:[::ffff:192.0.2.7]:9", "192.0.2.7"),
    ("unix:/run/dspex.sock", "unix"),
    ("unix-abstract:x", "unix"),
])
def test_peers_are_counted_by_address_without_the_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address


# ---------------------------------------------------------------- the guard alone


def test_initialize_session_calls_are_limited_per_peer_with_a_retry_after() -> None:
    now = Now()
    guard = Guard(Limits(inits_per_minute_per_peer=3), clock=now)
    for _ in range(3):
        guard.admit_init("10.0.0.1", "")
    with pytest.raises(RateLimitedError) as refused:
        guard.admit_init("10.0.0.1", "")
    assert refused.value.retry_after == 20.0  # 3 a minute: one every 20 s
    assert refused.value.details["limit"] == "inits_per_minute_per_peer"
    assert "retry after 20 s" in str(refused.value)
    guard.admit_init("10.0.0.2", "")  # another peer: its own bucket
    now.now += 15
    with pytest.raises(RateLimitedError) as again:
        guard.admit_init("10.0.0.1", "")
    assert again.value.retry_after == 5.0
    now.now += 5
    guard.admit_init("10.0.0.1", "")


def test_initialize_session_calls_are_limited_per_session_id_across_peers() -> None:
    guard = Guard(Limits(inits_per_minute_per_session=2), clock=Now())
    guard.admit_init("10.0.0.1", "bob")
    guard.admit_init("10.0.0.2", "bob")
    with pytest.raises(RateLimitedError, match="for session 'bob'") as refused:
        guard.admit_init("10.0.0.3", "bob")
    assert refused.value.retry_after == 30.0
    guard.admit_init("10.0.0.3", "carol")  # another id: its own bucket
    guard.admit_init("10.0.0.3", "")  # a fresh id names none


def test_a_refused_call_takes_no_token_from_the_other_bucket() -> None:
    guard = Guard(Limits(inits_per_minute_per_peer=5, inits_per_minute_per_session=1),
                  clock=Now())
    guard.admit_init("10.0.0.1", "bob")
    for _ in range(10):
        with pytest.raises(RateLimitedError):
            guard.admit_init("10.0.0.1", "bob")
    assert guard.inits_by_peer.tokens("10.0.0.1") == 4.0


def test_failed_authentications_are_limited_per_peer_and_per_session_id() -> None:
    now = Now()
    guard = Guard(Limits(auth_failures_per_minute_per_peer=4,
                         auth_failures_per_minute_per_session=2), clock=now)
    guard.failed("10.0.0.1", "bob")
    guard.failed("10.0.0.1", "bob")
    # bob's id is out of failures: attaching to it is refused from any peer ...
    with pytest.raises(RateLimitedError, match="auth_failures_per_minute_per_session") as by_id:
        guard.admit_init("10.0.0.9", "bob")
    assert by_id.value.retry_after == 30.0
    # ... while the peer still has two failures left for other ids.
    guard.admit_auth("10.0.0.1", "carol")
    guard.failed("10.0.0.1", "carol")
    guard.failed("10.0.0.1", "dave")
    with pytest.raises(RateLimitedError, match="auth_failures_per_minute_per_peer") as by_peer:
        guard.admit_auth("10.0.0.1")
    assert by_peer.value.retry_after == 15.0
    guard.admit_auth("10.0.0.2")
    now.now += 15
    guard.admit_auth("10.0.0.1")


# ---------------------------------------------------------------- through a real server


async def test_over_the_limit_initialize_session_is_resource_exhausted_with_retry_after() -> None:
    with EmbeddedServer(limits=Limits(inits_per_minute_per_peer=4)) as server:
        now = Now()
        _guarded(server, now)
        answers = await initialize(server.target, 6)
        assert _codes(answers) == ["ok"] * 4 + ["RESOURCE_EXHAUSTED"] * 2
        _, message, trailing = answers[4]  # type: ignore[misc]
        assert trailing["retry-after"] == "15"
        assert trailing["dspex-error-retry-after"] == "15"
        assert trailing["dspex-error-kind"] == "rate_limited"
        assert "inits_per_minute_per_peer limit of 4 per minute is used up; retry after " \
               "15 s" in message
        assert server.call(lambda: len(server.store.session_ids())) == 4  # nothing made
        # The client raises the error with its retry_after.
        with pytest.raises(RateLimitedError) as refused:
            async with dspex_rx.connect(server.target):
                pass
        assert refused.value.retry_after == 15.0
        assert isinstance(refused.value, ResourceExhaustedError)
        async with from_peer(server.target, "127.0.0.2") as other:
            assert _codes(await initialize(other, 1)) == ["ok"]
        now.now += 15
        assert _codes(await initialize(server.target, 2)) == ["ok", "RESOURCE_EXHAUSTED"]


async def _get(target: str, session_id: str, token: str) -> str:
    """A GetVariable call's status name (the variable does not exist: NOT_FOUND when
    authenticated)."""

    async def call(stub: object) -> str:
        try:
            await stub.GetVariable(  # type: ignore[attr-defined]
                pb.GetVariableRequest(session_id=session_id, ref="nope"),
                metadata=((SESSION_TOKEN_KEY, token),),
            )
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
        return "OK"

    result: str = await raw(target, call)
    return result


async def test_wrong_tokens_use_up_the_peer_then_even_the_right_token_waits() -> None:
    limits = Limits(auth_failures_per_minute_per_peer=3,
                    auth_failures_per_minute_per_session=100)
    with EmbeddedServer(limits=limits) as server:
        now = Now()
        _guarded(server, now)
        [made] = await initialize(server.target, 1, session_id="bob")
        token = made.session_token  # type: ignore[union-attr]
        bad = [await _get(server.target, "bob", "x" * 43) for _ in range(4)]
        assert bad == ["UNAUTHENTICATED"] * 3 + ["RESOURCE_EXHAUSTED"]
        # Out of failures, the right token is refused too: a guesser learns nothing.
        assert await _get(server.target, "bob", token) == "RESOURCE_EXHAUSTED"
        async with from_peer(server.target, "127.0.0.2") as other:
            assert await _get(other, "bob", token) == "NOT_FOUND"  # authenticated
        now.now += 20  # one failure refilled (3 a minute)
        assert await _get(server.target, "bob", token) == "NOT_FOUND"
        # A success spends nothing; the next wrong token uses the refilled one up again.
        assert await _get(server.target, "bob", "y" * 43) == "UNAUTHENTICATED"
        assert await _get(server.target, "bob", token) == "RESOURCE_EXHAUSTED"


async def test_wrong_principal_keys_lock_that_id_for_every_peer_but_not_others() -> None:
    limits = Limits(auth_failures_per_minute_per_session=2)
    with EmbeddedServer(limits=limits, principals={"admin_*": ADMIN_KEY}) as server:
        now = Now()
        _guarded(server, now)
        wrong = ((PRINCIPAL_KEY_KEY, "not-the-key-0123456789"),)
        right = ((PRINCIPAL_KEY_KEY, ADMIN_KEY),)
        answers = await initialize(server.target, 3, session_id="admin_x", metadata=wrong)
        assert _codes(answers) == ["UNAUTHENTICATED"] * 2 + ["RESOURCE_EXHAUSTED"]
        async with from_peer(server.target, "127.0.0.2") as other:
            locked = await initialize(other, 1, session_id="admin_x", metadata=right)
            assert _codes(locked) == ["RESOURCE_EXHAUSTED"]
            assert "for session 'admin_x'" in locked[0][1]  # type: ignore[index]
            assert _codes(await initialize(other, 1, session_id="admin_y",
                                           metadata=right)) == ["ok"]
        now.now += 30  # one failure refilled (2 a minute)
        assert _codes(await initialize(server.target, 1, session_id="admin_x",
                                       metadata=right)) == ["ok"]


async def test_a_session_stream_opened_with_a_wrong_token_counts_as_a_failure() -> None:
    with EmbeddedServer(limits=Limits(auth_failures_per_minute_per_peer=1)) as server:
        guard = _guarded(server, Now())
        [made] = await initialize(server.target, 1, session_id="bob")

        async def open_stream(stub: object) -> str:
            call = stub.Session(metadata=((SESSION_TOKEN_KEY, "z" * 43),))  # type: ignore[attr-defined]
            await call.write(spb.ClientMessage(open=spb.OpenStream(session_id="bob")))
            try:
                async for _ in call:
                    pass
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
            return "OK"

        assert await raw(server.target, open_stream) == "UNAUTHENTICATED"
        assert server.call(lambda: guard.failures_by_peer.tokens("127.0.0.1")) == 0.0
        token = made.session_token  # type: ignore[union-attr]
        assert await _get(server.target, "bob", token) == "RESOURCE_EXHAUSTED"


def _aio_error(
    code: grpc.StatusCode, trailing: tuple[tuple[str, str], ...]
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing),
                                "slow down")


@pytest.mark.parametrize(("trailing", "expected"), [
    ((("dspex-error-kind", "rate_limited"), ("dspex-error-retry-after", "2.5"),
      ("retry-after", "2.5")), 2.5),
    ((("retry-after", "7"),), 7.0),  # another server: only the plain header
])
def test_the_client_maps_a_rate_limit_to_rate_limited_error_with_retry_after(
    trailing: tuple[tuple[str, str], ...], expected: float
) -> None:
    error = map_rpc_error(_aio_error(grpc.StatusCode.RESOURCE_EXHAUSTED, trailing))
    assert isinstance(error, RateLimitedError) and error.retry_after == expected


def test_resource_exhausted_without_retry_after_stays_a_plain_limit() -> None:
    convert: Callable[[grpc.aio.AioRpcError], BaseException] = map_rpc_error
    error = convert(_aio_error(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               (("dspex-error-kind", "resource_exhausted"),)))
    assert type(error) is ResourceExhaustedError


def test_a_rate_limited_watch_stream_is_retried_while_other_limits_end_it() -> None:
    assert _retryable(RateLimitedError("slow down", retry_after="1.5"))
    assert not _retryable(ResourceExhaustedError("too many subscriptions"))


async def test_list_sessions_with_wrong_principal_keys_is_rate_limited_like_a_login() -> None:
    # ListSessions answers which key opens a namespace: without a limit it would be an
    # unbounded oracle for principal keys.
    limits = Limits(auth_failures_per_minute_per_peer=2)
    with EmbeddedServer(limits=limits, principals={"admin_*": ADMIN_KEY}) as server:
        now = Now()
        _guarded(server, now)
        right = ((PRINCIPAL_KEY_KEY, ADMIN_KEY),)
        assert _codes(await initialize(server.target, 1, session_id="admin_x",
                                       metadata=right)) == ["ok"]

        async def listing(key: str) -> str | list[str]:
            async def call(stub: object) -> str | list[str]:
                try:
                    answer = await stub.ListSessions(  # type: ignore[attr-defined]
                        pb.ListSessionsRequest(), metadata=((PRINCIPAL_KEY_KEY, key),))
                except grpc.aio.AioRpcError as exc:
                    return str(exc.code().name)
                return [s.session_id for s in answer.sessions]

            result: str | list[str] = await raw(server.target, call)
            return result

        assert await listing(ADMIN_KEY) == ["admin_x"]  # a right key spends nothing
        wrong = [await listing(f"guess-{i}-0123456789abcdef") for i in range(3)]
        assert wrong == [[], [], "RESOURCE_EXHAUSTED"]
        assert await listing(ADMIN_KEY) == "RESOURCE_EXHAUSTED"
        now.now += 30  # one failure refilled (2 a minute)
        assert await listing(ADMIN_KEY) == ["admin_x"]


async def test_the_rate_limits_are_serve_flags(tmp_path: Path) -> None:
    async with cli_server(tmp_path, "--inits-per-minute-per-peer", "2",
                          "--max-session-ttl", "45") as target:
        async with dspex_rx.connect(target, ttl_seconds=3600) as first:
            granted = await raw(target, lambda stub: stub.InitializeSession(
                pb.InitializeSessionRequest(session_id=first.session_id, ttl_seconds=3600),
                metadata=((SESSION_TOKEN_KEY, first.token),)))
            assert granted.ttl_seconds == 45
            with pytest.raises(RateLimitedError, match="inits_per_minute_per_peer limit of 2"
                               ) as refused:
                async with dspex_rx.connect(target):
                    pass
        # Two a minute: the next token is at most 30 s away (the bucket refills in real
        # time here, so only the bound is asserted).
        assert refused.value.retry_after is not None
        assert 0 < refused.value.retry_after <= 30
