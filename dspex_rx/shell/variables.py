"""The shell's variable commands (``get``, ``set``/``put``, ``ls``, ``history``,
``rollback``, ``rm``, ``deps``, ``watch``), each one call of the public client API.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from dspex_rx.errors import VariableNotFoundError
from dspex_rx.shell.render import dumps, plain, summary, table, text, when
from dspex_rx.shell.runner import UsageError, emit, joined, until_signal


def parse_value(raw: str) -> Any:
    """A command-line value: JSON when it parses as JSON, else the string itself.

    >>> parse_value("0.7"), parse_value('{"a": [1]}'), parse_value("gpt-4o")
    (0.7, {'a': [1]}, 'gpt-4o')
    """
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_json_flag(flag: str, raw: str | None) -> Any:
    """The JSON a flag holds (None when not given); ``UsageError`` naming the flag when
    it is not JSON.

    >>> parse_json_flag("--constraints", '{"min": 0}')
    {'min': 0}
    """
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"{flag} is not JSON ({exc}): {raw!r}") from None


def described(entry: dict[str, Any]) -> dict[str, Any]:
    """The JSON form of a variable description (``get -o json``, ``ls -o json``): name,
    type, version, value and the rest of what the server said.

    >>> described({"name": "t", "type": "float", "version": 2, "value": 0.7})["value"]
    0.7
    """
    document: dict[str, Any] = plain(entry)
    return document


async def get(args: argparse.Namespace) -> int:
    """``dspex-rx get NAME``: print the value (a string as it is, else JSON).

    Example: ``dspex-rx get temperature`` prints ``0.7``.
    """
    async with joined(args) as session:
        # A missing name is refused by the server, naming it.
        entry = (await session.get_variables([args.name], include_metadata=True))[args.name]
    emit(args, described(entry), lambda: print(text(plain(entry["value"]))))
    return 0


async def set_(args: argparse.Namespace) -> int:
    """``dspex-rx set NAME VALUE``: write a value (JSON when it parses, else a string);
    with ``--type`` a missing variable is registered with it (and ``--constraints``).

    Example: ``dspex-rx set temperature 0.9`` prints ``temperature = 0.9 (version 2)``.
    """
    value = args.value if args.string else parse_value(args.value)
    constraints = parse_json_flag("--constraints", args.constraints)
    if constraints is not None and not isinstance(constraints, dict):
        raise UsageError(f"--constraints must be a JSON object, got {args.constraints!r}")
    if constraints is not None and args.type is None:
        raise UsageError("--constraints registers a new variable, so it needs --type")
    async with joined(args) as session:
        try:
            version = await session.set_variable(args.name, value, source="dspex-rx shell")
            created = False
        except VariableNotFoundError:
            if args.type is None:
                raise VariableNotFoundError(
                    f"no variable {args.name!r} in session {args.session!r} (give --type "
                    "to register it)"
                ) from None
            await session.register_variable(args.name, args.type, value, constraints)
            version, created = 1, True
    emit(args, {"name": args.name, "value": value, "version": version, "created": created},
         lambda: print(f"{args.name} = {text(plain(value))} (version {version}"
                       f"{', registered' if created else ''})"))
    return 0


async def ls(args: argparse.Namespace) -> int:
    """``dspex-rx ls [PATTERN]``: the session's variables with type, version and a value
    summary (arrays as shape/dtype).

    Example: ``dspex-rx ls`` prints ``NAME  TYPE  VERSION  VALUE`` rows.
    """
    async with joined(args) as session:
        found = await session.list_variables(args.pattern, glob=args.glob)
    emit(args, [described(entry) for entry in found], lambda: table(
        ["NAME", "TYPE", "VERSION", "VALUE"],
        [[e["name"], e["type"], e["version"], summary(e["value"])] for e in found],
    ))
    return 0


async def history(args: argparse.Namespace) -> int:
    """``dspex-rx history NAME``: past versions, newest first.

    Example: ``dspex-rx history temperature --limit 5``.
    """
    async with joined(args) as session:
        entries = await session.get_variable_history(args.name, limit=args.limit)
    emit(args, plain(entries), lambda: table(
        ["VERSION", "UPDATED", "BY", "VALUE"],
        [[e.get("version", "-"), when(e.get("updated_at")), e.get("updated_by", "") or "-",
          summary(e.get("value")) if "value" in e else e.get("message", "(expired)")]
         for e in entries],
    ))
    return 0


async def rollback(args: argparse.Namespace) -> int:
    """``dspex-rx rollback NAME VERSION``: write VERSION's value again, as a new version.

    Example: ``dspex-rx rollback temperature 1`` prints the new version.
    """
    async with joined(args) as session:
        version = await session.rollback_variable(args.name, args.version, args.reason)
    emit(args, {"name": args.name, "rolled_back_to": args.version, "version": version},
         lambda: print(f"{args.name}: version {args.version} restored as version {version}"))
    return 0


async def rm(args: argparse.Namespace) -> int:
    """``dspex-rx rm NAME [--cascade]``: delete a variable (and its dependents).

    Example: ``dspex-rx rm temperature`` prints ``deleted temperature``.
    """
    async with joined(args) as session:
        deleted = await session.delete_variable(args.name, cascade=args.cascade)
    if not deleted:
        raise VariableNotFoundError(f"no variable {args.name!r} in session {args.session!r}")
    emit(args, {"name": args.name, "deleted": True, "cascade": args.cascade},
         lambda: print(f"deleted {args.name}" + (" and its dependents" if args.cascade else "")))
    return 0


async def deps(args: argparse.Namespace) -> int:
    """``dspex-rx deps NAME``: what NAME depends on (``--dependents``: what depends on it).

    Example: ``dspex-rx deps effective_temperature --transitive``.
    """
    async with joined(args) as session:
        walk = session.get_dependents if args.dependents else session.get_dependencies
        found = await walk(args.name, include_transitive=args.transitive)
    emit(args, plain(found), lambda: table(
        ["NAME", "KIND", "DEPTH"], [[e["name"], e["type"], e["depth"]] for e in found]))
    return 0


def update_line(update: Any, json_lines: bool) -> str:
    """One watch event as a line: JSON (name, value, version, revision, update_type,
    source, timestamp) or ``NAME = VALUE (version V)``.

    Example: ``update_line(update, False)`` is ``'t = 0.9 (version 2)'``.
    """
    if json_lines:
        return dumps({"name": update.name, "value": update.value, "version": update.version,
                      "revision": update.revision, "update_type": update.update_type,
                      "source": update.source, "timestamp": update.timestamp})
    if update.update_type == "deleted":
        return f"{update.name} deleted (version {update.version})"
    return f"{update.name} = {summary(update.value, 200)} (version {update.version})"


async def watch(args: argparse.Namespace) -> int:
    """``dspex-rx watch NAME [NAME...]``: one line per change (the current values first,
    unless ``--changes-only``) until Ctrl-C/SIGTERM or ``--count`` lines.

    Example: ``dspex-rx watch temperature -o json --count 2``.
    """
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count must be at least 1, got {args.count}")
    async with joined(args) as session:
        # Each name must exist (a missing one is refused here, naming it): a watch of a
        # missing name would wait forever, silently.
        await session.get_variables(args.names)

        async def follow() -> None:
            printed = 0
            async with session.watch_variables(
                args.names, include_initial=not args.changes_only
            ) as updates:
                async for update in updates:
                    print(update_line(update, args.output == "json"), flush=True)
                    printed += 1
                    if args.count is not None and printed >= args.count:
                        return

        await until_signal(follow)
    return 0
