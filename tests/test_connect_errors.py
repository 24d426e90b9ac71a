"""A first connection that fails says why in one line: nothing listening, a URL given as
the target, TLS on one side only, a host that does not resolve, no answer in time. Each
case against a real server or port, the gRPC error kept as the cause."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

import dspex_rx
from dspex_rx import ServerUnavailableError
from dspex_rx.server import EmbeddedServer


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _refusal(target: str, **options: Any) -> ServerUnavailableError:
    with pytest.raises(ServerUnavailableError) as info:
        async with dspex_rx.connect(target, **options):
            pass
    error = info.value
    # One exception, one line: the hint, not gRPC's status dump.
    assert "\n" not in str(error)
    assert str(error).startswith(f"cannot connect to the dspex-rx server at {target!r}: ")
    assert isinstance(error, ConnectionError) and error.kind == "unavailable"
    assert error.details["target"] == target
    cause = error.__cause__
    assert isinstance(cause, grpc.aio.AioRpcError)
    assert cause.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    # The failed attempt leaves no transport thread behind.
    assert not [t for t in threading.enumerate() if t.name.startswith("dspex-rx-io")]
    return error


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_server(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[EmbeddedServer]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder: Path = tmp_path_factory.mktemp("tls")
    (folder / "server.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    (folder / "server.key").write_bytes(cert.private_key_pem.bytes())
    with EmbeddedServer(tls_cert=str(folder / "server.pem"),
                        tls_key=str(folder / "server.key")) as server:
        yield server


# Guards: a server that is not running gave a ~40-line gRPC traceback ("Connection refused").
async def test_nothing_listening_asks_whether_the_server_runs_there() -> None:
    port = _free_port()
    error = await _refusal(f"127.0.0.1:{port}")
    assert str(error).endswith(
        f"nothing is listening there: is the server running at 127.0.0.1:{port} "
        f"(dspex-rx serve --port {port})?"
    )
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)
    assert "Connection refused" in (error.__cause__.details() or "")


# Guards: an http:// prefix gave gRPC's "errors resolving http://..." traceback.
async def test_an_http_prefix_says_to_drop_it(server: EmbeddedServer) -> None:
    error = await _refusal(f"http://{server.target}")
    assert str(error).endswith(
        f"drop the 'http://' prefix: gRPC targets are host:port, e.g. {server.target!r}"
    )
    # The advice is right: the same address without the prefix connects.
    async with dspex_rx.connect(server.target) as session:
        assert await session.ping(b"ok") == b"ok"


async def test_an_https_prefix_says_to_drop_it_and_turn_tls_on(
    tls_server: EmbeddedServer,
) -> None:
    error = await _refusal(f"https://{tls_server.target}")
    assert str(error).endswith(
        f"drop the 'https://' prefix: gRPC targets are host:port, e.g. "
        f"{tls_server.target!r} (with tls=True for a TLS server)"
    )


# Guards: a plaintext client of a TLS server gave a raw UNAVAILABLE "Socket closed".
async def test_a_plaintext_client_of_a_tls_server_is_told_to_turn_tls_on(
    tls_server: EmbeddedServer,
) -> None:
    error = await _refusal(tls_server.target, timeout=10)
    assert str(error).endswith(
        "the server closed the connection at once: does it serve TLS (--tls-cert)? Then "
        "pass tls=True or ca_cert='ca.pem'"
    )


# Guards: a TLS client of a plaintext server gave a raw "Tls handshake failed" traceback.
async def test_a_tls_client_of_a_plaintext_server_is_told_it_serves_plaintext(
    server: EmbeddedServer, ca: trustme.CA,
) -> None:
    error = await _refusal(server.target, ca_cert=ca.cert_pem.bytes(), timeout=10)
    assert str(error).endswith(
        "the TLS handshake failed: does the server serve TLS? One started without "
        "--tls-cert serves plaintext: connect without tls/ca_cert"
    )
    assert "WRONG_VERSION_NUMBER" in (error.__cause__.details() or "")  # type: ignore[union-attr]


async def test_a_certificate_from_another_ca_is_told_to_pass_its_ca(
    tls_server: EmbeddedServer,
) -> None:
    error = await _refusal(tls_server.target, ca_cert=trustme.CA().cert_pem.bytes(),
                           timeout=10)
    assert str(error).endswith(
        "the server's certificate is not trusted: pass ca_cert= the CA certificate that "
        "signed it (PEM path or bytes)"
    )


async def test_a_certificate_for_another_name_is_told_to_use_a_name_it_holds(
    tls_server: EmbeddedServer, ca: trustme.CA,
) -> None:
    error = await _refusal(tls_server.target, ca_cert=ca.cert_pem.bytes(),
                           tls_server_name="elsewhere.test", timeout=10)
    assert str(error).endswith(
        "the server's certificate does not name the host connected to: connect by a name "
        "it holds, or pass tls_server_name="
    )


async def test_a_host_that_does_not_resolve_is_named() -> None:
    error = await _refusal("no-such-host.invalid:50051")
    assert str(error).endswith("its host name does not resolve: check it (targets are "
                               "host:port)")


async def test_a_server_that_never_answers_times_out_with_a_hint() -> None:
    # A socket that listens but never speaks HTTP/2: the kernel accepts, nobody answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        error = await _refusal(target, timeout=0.5)
    assert error.__cause__.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[union-attr]
    assert str(error).endswith("no answer within the call's timeout: is the server running "
                               "there, and is the address reachable from here (a firewall)?")


async def test_several_targets_with_a_url_prefix_are_refused_before_dialling() -> None:
    with pytest.raises(dspex_rx.InvalidValueError) as info:
        async with dspex_rx.connect(["http://127.0.0.1:1", "http://127.0.0.1:2"]):
            pass
    assert str(info.value).endswith(
        "drop the 'http://' prefix: gRPC targets are host:port, e.g. '127.0.0.1:1'"
    )

