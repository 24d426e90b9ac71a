"""The shell's variable commands (get, set/put, ls, history, rollback, rm, deps, export,
import) and its errors, each run as the real ``dspex-rx`` against a real server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from helpers import SCRIPT
from shell_run import HANG_GUARD, ROOT, Shell, environment, served

import dspex_rx


def one_error(done: subprocess.CompletedProcess[str], command: str, code: int) -> str:
    """The single stderr line of a refused command (no traceback), its prefix checked."""
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"dspex-rx {command}: error: "), done.stderr
    return done.stderr


def test_set_registers_with_type_then_writes_and_get_reads(sh: Shell) -> None:
    made = sh("set", "temperature", "0.7", "--type", "float",
              "--constraints", '{"min": 0, "max": 2}')
    assert made.stdout == "temperature = 0.7 (version 1, registered)\n"
    assert sh("set", "temperature", "0.9").stdout == "temperature = 0.9 (version 2)\n"
    assert sh("put", "model", "gpt-4o", "--type", "string").stdout == (
        "model = gpt-4o (version 1, registered)\n")

    assert sh("get", "temperature").stdout == "0.9\n"
    assert sh("get", "model").stdout == "gpt-4o\n"  # a string as it is, unquoted
    got = sh.json("get", "temperature")
    assert (got["name"], got["type"], got["value"], got["version"]) == (
        "temperature", "float", 0.9, 2)
    assert got["constraints"] == {"min": 0, "max": 2}
    written = sh.json("set", "temperature", "1.5")
    assert written == {"name": "temperature", "value": 1.5, "version": 3, "created": False}


def test_set_takes_json_values_and_falls_back_to_strings(sh: Shell) -> None:
    sh("set", "config", '{"layers": [1, 2], "name": "x"}', "--type", "dict")
    sh("set", "flag", "true", "--type", "boolean")
    sh("set", "label", "hello world", "--type", "string")
    sh("set", "code", "42", "--string", "--type", "string")
    values = {e["name"]: e["value"] for e in sh.json("ls")}
    assert values == {"code": "42", "config": {"layers": [1, 2], "name": "x"}, "flag": True,
                      "label": "hello world"}


def test_ls_lists_type_version_and_summarises_arrays(sh: Shell) -> None:
    sh("set", "emb", "[0.5, 0.25, 0.125]", "--type", "embedding")
    sh("set", "lr", "0.1", "--type", "float")
    sh("set", "lr", "0.2")
    sh("set", "note", "x" * 100, "--type", "string")
    rows = [line.split() for line in sh("ls").stdout.splitlines()]
    assert rows[0] == ["NAME", "TYPE", "VERSION", "VALUE"]
    assert rows[1] == ["emb", "embedding", "1", "array(shape=(3,),", "dtype=float64)"]
    assert rows[2] == ["lr", "float", "2", "0.2"]
    assert rows[3] == ["note", "string", "1", "x" * 57 + "..."]
    listed = sh.json("ls", "^l")
    assert [(e["name"], e["value"]) for e in listed] == [("lr", 0.2)]
    assert sh.json("get", "emb")["value"] == [0.5, 0.25, 0.125]  # JSON: arrays as lists
    assert [e["name"] for e in sh.json("ls", "e*", "--glob")] == ["emb"]


def test_history_lists_versions_newest_first_and_rollback_restores_one(sh: Shell) -> None:
    for value in ("1", "2", "3"):
        sh("set", "n", value, "--type", "integer")
    assert [(e["version"], e["value"]) for e in sh.json("history", "n")] == [
        (3, 3), (2, 2), (1, 1)]
    assert [e["version"] for e in sh.json("history", "n", "--limit", "2")] == [3, 2]
    rows = sh("history", "n").stdout.splitlines()
    assert rows[0].split() == ["VERSION", "UPDATED", "BY", "VALUE"]
    assert rows[1].split()[0] == "3" and rows[1].split()[-1] == "3"

    assert sh("rollback", "n", "1").stdout == "n: version 1 restored as version 4\n"
    assert sh("get", "n").stdout == "1\n"
    missing = sh("rollback", "n", "99", check=False)
    one_error(missing, "rollback", 1)


async def test_deps_walks_the_graph_and_rm_cascades(sh: Shell) -> None:
    sh("set", "base", "0.5", "--type", "float")
    sh("set", "effective", "0.4", "--type", "float")
    async with dspex_rx.connect(sh.target, sh.env["DSPEX_RX_SESSION"],
                                token=sh.env["DSPEX_RX_TOKEN"], create=False) as session:
        await session.add_dependency("effective", "base")
    assert [(d["name"], d["depth"]) for d in sh.json("deps", "effective")] == [("base", 1)]
    assert [d["name"] for d in sh.json("deps", "base", "--dependents")] == ["effective"]
    rows = sh("deps", "effective").stdout.splitlines()
    assert rows[1].split() == ["base", "data", "1"]

    assert sh("rm", "base", "--cascade").stdout == "deleted base and its dependents\n"
    assert sh.json("ls") == []
    one_error(sh("rm", "base", check=False), "rm", 1)


def test_export_then_import_round_trips_the_variables(sh: Shell, tmp_path: Path) -> None:
    sh("set", "temperature", "0.7", "--type", "float")
    sh("set", "temperature", "0.8")
    stdout_doc = json.loads(sh("export").stdout)
    assert [(v["name"], v["value"]) for v in stdout_doc["variables"]] == [("temperature", 0.8)]
    path = tmp_path / "vars.yaml"
    sh("export", str(path), "--history")
    assert path.read_text().startswith("format: dspex-rx/variables")

    sh("set", "temperature", "1.9")
    dry = sh.json("import", str(path), "--dry-run", "--merge", "keep")
    assert (dry["dry_run"], dry["imported"], dry["skipped"]) == (True, 0, 1)
    assert sh("get", "temperature").stdout == "1.9\n"
    done = sh("import", str(path))
    assert done.stdout.splitlines()[-1] == "imported 1, skipped 0, errors 0"
    assert sh("get", "temperature").stdout == "0.8\n"

    junk = tmp_path / "junk.json"
    junk.write_text("{not an export")
    one_error(sh("import", str(junk), check=False), "import", 1)
    assert sh("get", "temperature").stdout == "0.8\n"  # nothing half-written
    gone = one_error(sh("import", str(tmp_path / "nope.json"), check=False), "import", 1)
    assert "cannot read" in gone and "nope.json" in gone


async def test_export_with_a_data_dir_is_still_the_servers_export(
    sh: Shell, tmp_path: Path
) -> None:
    # `dspex-rx export --data-dir DIR` predates the shell: every session of a data dir as
    # JSON Lines, even with a session in the environment.
    async with dspex_rx.connect(data_dir=tmp_path / "data", session_id="kept_1") as session:
        await session.register_variable("t", "float", 0.5)
    done = sh("export", "--data-dir", str(tmp_path / "data"))
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["session_id"] for line in lines] == ["kept_1"]
    assert done.stderr == f"exported 1 sessions from {tmp_path / 'data'}\n"


def test_expected_errors_are_one_line_with_an_exit_code(sh: Shell, shell_target: str) -> None:
    sh("set", "t", "0.5", "--type", "float", "--constraints", '{"min": 0, "max": 1}')
    assert "no variable(s) 'nope'" in one_error(sh("get", "nope", check=False), "get", 1)
    missing = one_error(sh("set", "nope", "1", check=False), "set", 1)
    assert "give --type to register it" in missing
    assert "above max 1" in one_error(sh("set", "t", "5", check=False), "set", 1)
    assert sh("get", "t").stdout == "0.5\n"
    bad_json = one_error(sh("set", "x", "1", "--type", "integer", "--constraints", "{bad",
                            check=False), "set", 2)
    assert "--constraints is not JSON" in bad_json
    untyped = one_error(sh("set", "y", "1", "--constraints", "{}", check=False), "set", 2)
    assert "needs --type" in untyped
    assert "--count must be at least 1" in one_error(
        sh("watch", "t", "--count", "0", check=False), "watch", 2)

    token = one_error(sh("ls", check=False, DSPEX_RX_TOKEN="not-the-token"), "ls", 1)
    assert "not the token of session" in token and "DSPEX_RX_TOKEN" in token
    unknown = one_error(sh("ls", check=False, DSPEX_RX_SESSION="no_such_session"), "ls", 1)
    assert "no session 'no_such_session'" in unknown
    nobody = one_error(Shell(shell_target)("ls", check=False), "ls", 2)
    assert "pass --session ID or set DSPEX_RX_SESSION" in nobody
    refused = one_error(sh("ls", "--target", "127.0.0.1:1", check=False), "ls", 3)
    assert "cannot connect to the dspex-rx server at '127.0.0.1:1': nothing is listening" in (
        refused)
    scheme = one_error(sh("ls", "--target", f"http://{shell_target}", check=False), "ls", 2)
    assert "without a scheme" in scheme
    # gRPC's dns:// target passes (here: a DNS server that is not there, named).
    no_dns = one_error(sh("ls", "--target", "dns://127.0.0.1:1/replicas.dspex.test:1",
                          check=False), "ls", 3)
    assert "the DNS server 127.0.0.1:1 did not answer" in no_dns
    usage = sh("rollback", "t", "one", check=False)
    assert usage.returncode == 2 and "invalid int value" in usage.stderr


def readme_shell_session() -> tuple[list[str], list[str]]:
    """The README's Shell section's console block: its commands and its output lines."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Shell\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```console\n", 1)[1].split("```", 1)[0]
    commands = [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    output = [line for line in block.splitlines() if not line.startswith("$ ")]
    return commands, output


def test_the_readme_shell_session_is_what_the_shell_prints(tmp_path: Path) -> None:
    commands, expected = readme_shell_session()
    assert commands[0] == "dspex-rx serve --storage memory --session-ttl 3600 &"
    with served(tmp_path, "--session-ttl", "3600") as address:
        env = environment(DSPEX_RX_TARGET=address)
        env["PATH"] = f"{SCRIPT.parent}{os.pathsep}{env['PATH']}"
        script = "exec 2>&1\n" + "\n".join(commands[1:]) + "\n"
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              env=env, timeout=HANG_GUARD * 2)
    assert done.stdout.splitlines() == expected
