"""Who may list which sessions (``ListSessions``), and the shell's ``sessions``, ``session
new`` and ``health`` run as the real executable against a real server."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from helpers import SCRIPT
from shell_run import Shell, environment, served

import dspex_rx
from dspex_rx.client.probe import health_status, list_sessions
from dspex_rx.errors import AuthenticationError, SessionNotFoundError
from dspex_rx.server import EmbeddedServer
from dspex_rx.store import MemoryStore

ADMIN_KEY = "shell-admin-key-0123456789"


def test_the_store_shows_a_caller_its_own_session_and_its_namespaces_only() -> None:
    store = MemoryStore(principals={"admin_*": ADMIN_KEY})
    mine, _, _ = store.initialize_session("mine")
    store.initialize_session("theirs")
    store.initialize_session("admin_1", principal_key=ADMIN_KEY)
    store.initialize_session("admin_2", principal_key=ADMIN_KEY)

    assert [s.id for s in store.visible_sessions("mine", mine.token)] == ["mine"]
    assert [s.id for s in store.visible_sessions(principal_key=ADMIN_KEY)] == [
        "admin_1", "admin_2"]
    assert [s.id for s in store.visible_sessions("mine", mine.token, ADMIN_KEY)] == [
        "admin_1", "admin_2", "mine"]
    assert store.visible_sessions() == []
    assert store.visible_sessions(principal_key="wrong-key-0123456789") == []
    assert [s.id for s in store.visible_sessions(everything=True)] == [
        "admin_1", "admin_2", "mine", "theirs"]
    with pytest.raises(AuthenticationError, match="not the token of session 'theirs'"):
        store.visible_sessions("theirs", mine.token)
    with pytest.raises(AuthenticationError, match="needs its session token"):
        store.visible_sessions("theirs")


async def test_list_sessions_over_grpc_never_shows_a_strangers_id() -> None:
    store = MemoryStore(principals={"admin_*": ADMIN_KEY}, session_ttl=300)
    with EmbeddedServer(store=store) as server:
        async with dspex_rx.connect(server.target, "alice") as alice, dspex_rx.connect(
            server.target, "admin_ops", principal_key=ADMIN_KEY
        ) as admin:
            await alice.register_variable("t", "float", 0.5)
            seen = await alice.list_sessions()
            assert [s["session_id"] for s in seen] == ["alice"]
            assert seen[0]["variables"] == 1 and seen[0]["clients"] == 1
            assert seen[0]["session_ttl_seconds"] == 300.0
            assert seen[0]["expires_at"] is None  # a client is attached

            # A stranger (no token, no key) sees nothing; a wrong token is refused.
            assert await list_sessions(server.target) == ([], False)
            with pytest.raises(AuthenticationError):
                await list_sessions(server.target, "alice", token=admin.token)
            with pytest.raises(SessionNotFoundError):
                await list_sessions(server.target, "nobody", token=admin.token)
            # The principal's key opens its namespace, and only that.
            ids = [s["session_id"] for s in await admin.list_sessions(principal_key=ADMIN_KEY)]
            assert ids == ["admin_ops"]
            both, everything = await list_sessions(server.target, "alice", token=alice.token,
                                                   principal_key=ADMIN_KEY)
            assert [s["session_id"] for s in both] == ["admin_ops", "alice"]
            assert everything is False
        # Left by its clients, a session is listed idle, with when it will end.
        (idle,), _ = await list_sessions(server.target, principal_key=ADMIN_KEY)
        assert idle["clients"] == 0
        assert idle["expires_at"] == pytest.approx(idle["idle_since"] + 300)


async def test_a_server_without_token_checks_lists_every_session() -> None:
    with EmbeddedServer(auth="none") as server:
        async with dspex_rx.connect(server.target, "a"), dspex_rx.connect(server.target, "b"):
            found, everything = await list_sessions(server.target)
            assert [s["session_id"] for s in found] == ["a", "b"]
            assert everything is True


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served(tmp_path_factory.mktemp("serve"), "--session-ttl", "600") as address:
        yield address


def test_sessions_lists_only_the_callers_session(target: str) -> None:
    other = Shell(target)
    other.new()
    sh = Shell(target)
    made = sh.new("--id", "shell_sessions_1")
    sh("set", "t", "0.5", "--type", "float")

    listed = sh.json("sessions")
    assert listed["all_sessions"] is False
    assert [s["session_id"] for s in listed["sessions"]] == ["shell_sessions_1"]
    assert listed["sessions"][0]["variables"] == 1
    assert listed["sessions"][0]["session_ttl_seconds"] == 600.0
    assert made["session_ttl_seconds"] == 600.0
    table = sh("sessions").stdout.splitlines()
    assert table[0].split() == ["SESSION", "CLIENTS", "VARIABLES", "REVISION", "CREATED",
                                "KEPT", "EXPIRES"]
    assert table[1].split()[:3] == ["shell_sessions_1", "0", "1"]
    assert len(table) == 2  # the other session's id is not shown

    stranger = Shell(target)("sessions")
    assert [line.split() for line in stranger.stdout.splitlines()] == [table[0].split()]
    assert "--principal-key" in stranger.stderr


def test_session_new_hands_the_session_to_a_later_program(target: str) -> None:
    script = ('eval "$(dspex-rx session new)" && dspex-rx set n 41 --type integer && '
              'dspex-rx set n 42 && dspex-rx get n && echo "$DSPEX_RX_SESSION"')
    env = environment(DSPEX_RX_TARGET=target)
    env["PATH"] = f"{SCRIPT.parent}:{env['PATH']}"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-2] == "42"
    assert lines[-1].startswith("sess_")
    assert f"# session {lines[-1]}: kept 600s after its last client leaves" in done.stderr


def test_session_new_refuses_a_server_that_ends_sessions_with_their_last_client(
    tmp_path: Path,
) -> None:
    with served(tmp_path) as address:  # --storage memory: session TTL 0
        done = Shell(address)("session", "new", "--id", "doomed", check=False)
        assert done.returncode == 1
        assert done.stdout == ""
        assert done.stderr.count("\n") == 1
        assert "ends a session with its last client" in done.stderr
        assert "--session-ttl" in done.stderr
        assert Shell(address, {"DSPEX_RX_SESSION": "doomed"})(
            "ls", check=False).returncode == 1  # it ended with the command


def test_session_new_refuses_an_id_that_exists(target: str) -> None:
    Shell(target).new("--id", "shell_taken")
    done = Shell(target)("session", "new", "--id", "shell_taken", check=False)
    assert done.returncode == 1
    assert "needs its session token" in done.stderr


def test_health_says_serving_or_why_not(target: str) -> None:
    sh = Shell(target)
    assert sh("health").stdout == "SERVING\n"
    assert sh.json("health")["status"] == "SERVING"
    unknown = sh("health", "--service", "no.such.Service", check=False)
    assert unknown.returncode == 1
    assert unknown.stderr == (
        f"dspex-rx health: error: service 'no.such.Service' at {target} is SERVICE_UNKNOWN\n")
    gone = Shell("127.0.0.1:1")("health", check=False)
    assert gone.returncode == 3
    assert gone.stderr.startswith("dspex-rx health: error: cannot connect to the dspex-rx "
                                  "server at '127.0.0.1:1': nothing is listening there")
    assert gone.stderr.count("\n") == 1


async def test_health_status_from_python(target: str) -> None:
    assert await health_status(target) == "SERVING"
    assert await health_status(target, "dspex_rx.v1.Variables") == "SERVING"



def test_the_shell_speaks_tls_with_a_ca_cert(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = (tmp_path / n for n in ("server.pem", "server.key", "ca.pem"))
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_path.write_bytes(cert.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_path))
    with served(tmp_path, "--session-ttl", "600", "--tls-cert", str(cert_path),
                "--tls-key", str(key_path)) as address:
        sh = Shell(address, {"DSPEX_RX_CA_CERT": str(ca_path)})
        assert sh("health").stdout == "SERVING\n"
        made = sh.new()
        sh.env["DSPEX_RX_CA_CERT"] = str(ca_path)
        sh("set", "t", "0.25", "--type", "float")
        assert sh("get", "t").stdout == "0.25\n"
        plaintext = Shell(address, {"DSPEX_RX_SESSION": made["session_id"]})(
            "get", "t", check=False)
        assert plaintext.returncode == 3
        assert plaintext.stderr.startswith(
            f"dspex-rx get: error: cannot connect to the dspex-rx server at '{address}': ")
        assert "does it serve TLS" in plaintext.stderr
        assert plaintext.stderr.count("\n") == 1
