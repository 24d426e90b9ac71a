"""``dspex-rx ui`` run as the real executable against a real server: it serves the page and
the bridge for the session it joins, refuses what it cannot do in one line, and Ctrl-C ends
it cleanly."""

from __future__ import annotations

import os
import socket
import subprocess

import httpx
from helpers import SCRIPT
from web_helpers import running_ui

import dspex_rx


async def test_ui_serves_the_page_and_the_sessions_variables_until_ctrl_c(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("temperature", "float", 0.7)
    async with running_ui(session) as ui:
        assert ui.url.startswith("http://127.0.0.1:")  # this machine only, by default
        async with httpx.AsyncClient(base_url=ui.url) as client:
            page = await client.get("/")
            script = await client.get("/static/app.js")
            value = await client.get("/variables/temperature")
        code, out, err = ui.stop()
    assert page.status_code == 200 and "static/app.js" in page.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert value.json()["value"] == 0.7
    assert (code, out.strip(), err) == (0, "dspex-rx ui: stopped", "")


async def test_ui_token_is_asked_of_data_requests(session: dspex_rx.SessionContext) -> None:
    await session.register_variable("t", "integer", 3)
    async with running_ui(session, "--ui-token", "s3cret") as ui:
        async with httpx.AsyncClient(base_url=ui.url) as client:
            refused = await client.get("/variables/t")
            allowed = await client.get("/variables/t?token=s3cret")
        ui.stop()
    assert refused.status_code == 401
    assert allowed.json()["value"] == 3


def test_ui_without_a_session_says_which_setting_is_missing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_RX_")}
    done = subprocess.run([str(SCRIPT), "ui", "--target", "127.0.0.1:1"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "dspex-rx ui: missing --session (or DSPEX_RX_SESSION), --token (or DSPEX_RX_TOKEN)")


async def test_ui_on_a_port_in_use_fails_in_one_line(session: dspex_rx.SessionContext) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [str(SCRIPT), "ui", "--target", str(session.target), "--session",
             session.session_id, "--token", str(session.token), "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.startswith(f"dspex-rx ui: cannot serve on 127.0.0.1:{port}: ")
    assert len(done.stderr.strip().splitlines()) == 1


def test_ui_against_no_server_fails_in_one_line() -> None:
    # Bug: an unreachable server printed gRPC's multi-line error repr.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        done = subprocess.run(
            [str(SCRIPT), "ui", "--target", f"127.0.0.1:{port}", "--session", "s1",
             "--token", "t", "--port", "0"], capture_output=True, text=True, timeout=120,
        )
    assert done.returncode == 1
    assert done.stderr.startswith("dspex-rx ui: ")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
