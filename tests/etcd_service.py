"""Owns the test etcd: one member on loopback on free ports with its own data dir, started
and checked healthy, stopped, killed and restarted, for the tests and benchmarks that need it.

``make test`` installs the binary (Debian's ``etcd-server``); ``DSPEX_ETCD_BIN`` names
another. Without one, etcd tests skip with the reason, except in CI (``CI=true``), where
a missing etcd fails them: CI must never pass by not running them.

    with EtcdMember(tmp_path) as member:   # started and healthy
        member.endpoint                    # "127.0.0.1:<client port>"
        member.restart()                   # SIGKILL, then start again on the same dir/ports
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

BINARY_ENV = "DSPEX_ETCD_BIN"
# A hang guard, not a timing claim: a healthy single member answers in well under a second.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# etcd's default is 10 minutes; a watch made with progress_notify hears within this instead.
PROGRESS_NOTIFY_INTERVAL = "1s"
INSTALL_HINT = (
    "install it with `apt-get install etcd-server` (make test does this as root) or set "
    f"{BINARY_ENV} to an etcd binary"
)


# Loopback only: an http_proxy in the environment must not carry the health check away.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EtcdUnavailable(RuntimeError):
    """No etcd binary here; the message says why and how to get one."""


def find_binary(environ: Mapping[str, str] = os.environ) -> str:
    """The etcd binary to run: ``$DSPEX_ETCD_BIN``, else ``etcd`` on PATH or in /usr/bin.

    Raises ``EtcdUnavailable`` naming what was looked for.

    >>> try:
    ...     find_binary({BINARY_ENV: "/nonexistent/etcd"})
    ... except EtcdUnavailable as e:
    ...     print(str(e).split(";")[0])
    DSPEX_ETCD_BIN=/nonexistent/etcd is not an executable file
    """
    named = environ.get(BINARY_ENV)
    if named:
        if os.path.isfile(named) and os.access(named, os.X_OK):
            return named
        raise EtcdUnavailable(f"{BINARY_ENV}={named} is not an executable file; {INSTALL_HINT}")
    found = shutil.which("etcd") or shutil.which("etcd", path="/usr/bin:/usr/local/bin")
    if found is None:
        raise EtcdUnavailable(f"no etcd binary on PATH; {INSTALL_HINT}")
    return found


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """True where a missing etcd must fail rather than skip (``CI`` set to true or 1).

    >>> in_ci({"CI": "true"}), in_ci({})
    (True, False)
    """
    return environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_binary(environ: Mapping[str, str] = os.environ) -> str:
    """The etcd binary, or the test's end: ``pytest.skip`` with the reason, or
    ``pytest.fail`` in CI, where etcd tests must run.

    Example: ``require_binary()`` first thing in a fixture that starts a member.
    """
    import pytest  # only the tests call this; the benchmarks import this module too

    try:
        return find_binary(environ)
    except EtcdUnavailable as missing:
        if in_ci(environ):
            pytest.fail(f"etcd is required in CI: {missing}", pytrace=False)
        pytest.skip(f"etcd not available: {missing}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS's pick).

    >>> 0 < free_port() < 65536
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EtcdMember:
    """One etcd member: ``workdir/data`` its data dir, ``workdir/etcd.log`` its output.

    Ports are picked free on first start and kept, so ``stop()``/``start()`` and
    ``restart()`` bring back the same member on the same endpoint and data.

    Example::

        member = EtcdMember(tmp_path / "etcd").start()
        try:
            member.kill()        # SIGKILL: a crash, nothing flushed on the way out
            member.start()       # same data dir, same ports
        finally:
            member.stop()
    """

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = "dspex-test",
        client_port: int | None = None,
        peer_port: int | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "etcd.log"
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.extra_args = list(extra_args)
        self.binary = binary
        self._chosen_ports = client_port is None and peer_port is None
        self._started_once = False
        self._token = f"dspex-{uuid.uuid4().hex[:12]}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client URL, as a gRPC target takes it."""
        if self.client_port is None:
            raise RuntimeError("the member has no client port until it is started")
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        """The client URL (``http://127.0.0.1:<port>``)."""
        return f"http://{self.endpoint}"

    @property
    def pid(self) -> int | None:
        """The running process's id, or None when it is not running."""
        return self._proc.pid if self.running else None  # type: ignore[union-attr]

    @property
    def running(self) -> bool:
        """True while the process lives."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The etcd command line for this member's dir and ports."""
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            self.binary or find_binary(),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            # Ignored once the data dir holds a member: a restart rejoins as itself.
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self._token,
            "--logger", "zap",
            "--log-level", "warn",
            "--experimental-watch-progress-notify-interval", PROGRESS_NOTIFY_INTERVAL,
            *self.extra_args,
        ]

    def start(self, timeout: float = START_TIMEOUT) -> EtcdMember:
        """Start the process and return once it answers ``/health`` as healthy.

        Free ports are picked on the first start; if one was taken in between (another
        process won the race), new ones are picked, up to three tries. On a restart the
        ports are the member's own and are kept.
        """
        if self.running:
            raise RuntimeError(f"etcd member {self.name} is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        tries = 3 if self._chosen_ports and not self._started_once else 1
        for attempt in range(tries):
            if self.client_port is None or (attempt and self._chosen_ports):
                self.client_port, self.peer_port = free_port(), free_port()
            elif self.peer_port is None:
                self.peer_port = free_port()
            try:
                self._launch(timeout)
                self._started_once = True
                return self
            except _PortTaken:
                if attempt == tries - 1:
                    raise
                # The failed try may have written its peer URL into a new data dir.
                shutil.rmtree(self.data_dir, ignore_errors=True)
        raise AssertionError("unreachable")

    def _launch(self, timeout: float) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {' '.join(self.command())}\n".encode())
            log.flush()
            # In our process group, so whatever stops the run's group stops etcd too.
            self._proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = self.log_tail()
                if "address already in use" in tail:
                    raise _PortTaken(tail)
                raise RuntimeError(f"etcd exited with code {code} while starting:\n{tail}")
            if self.healthy():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(
                    f"etcd not healthy on {self.endpoint} after {timeout} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def healthy(self) -> bool:
        """True when the member answers ``GET /health`` with ``{"health": "true"}`` (a
        linearizable read through raft, so it has a leader and applies writes)."""
        try:
            with _NO_PROXY.open(f"{self.client_url}/health", timeout=2) as answer:
                return bool(json.loads(answer.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout``); a stopped member stays stopped."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL and reap: a crash, nothing flushed or closed on the way out."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    def restart(self, timeout: float = START_TIMEOUT) -> EtcdMember:
        """Kill -9 and start again on the same data dir and ports; returns when healthy."""
        self.kill()
        return self.start(timeout)

    def remove(self) -> None:
        """Stop, then delete the work dir (data and log)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the member's output (for failure messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> EtcdMember:
        return self if self.running else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _PortTaken(RuntimeError):
    pass


@contextmanager
def running_member(workdir: Path, **options: Any) -> Iterator[EtcdMember]:
    """A started, healthy member for the ``with`` block; stopped and its dir removed after.

    Example::

        with running_member(tmp_path / "etcd") as member:
            channel = grpc.aio.insecure_channel(member.endpoint)
    """
    member = EtcdMember(workdir, **options)
    member.start()
    try:
        yield member
    finally:
        member.remove()


@dataclass
class Stubs:
    """etcd's v3 services on one ``grpc.aio`` channel (``dspex_rx.etcd_v3`` stubs)."""

    channel: Any
    kv: Any
    watch: Any
    lease: Any
    maintenance: Any


@asynccontextmanager
async def stubs(endpoint: str) -> AsyncIterator[Stubs]:
    """The KV, Watch, Lease and Maintenance stubs on a new channel to ``endpoint``, closed
    after; call inside a running asyncio loop (grpc.aio).

    Example::

        async with stubs(member.endpoint) as etcd:
            await etcd.kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v"))
    """
    import grpc

    from dspex_rx.etcd_v3 import rpc_pb2_grpc

    # Loopback only: gRPC would otherwise honour an http_proxy in the environment.
    channel = grpc.aio.insecure_channel(endpoint, options=[("grpc.enable_http_proxy", 0)])
    try:
        yield Stubs(
            channel=channel,
            kv=rpc_pb2_grpc.KVStub(channel),
            watch=rpc_pb2_grpc.WatchStub(channel),
            lease=rpc_pb2_grpc.LeaseStub(channel),
            maintenance=rpc_pb2_grpc.MaintenanceStub(channel),
        )
    finally:
        await channel.close()
