"""The shell's ``export`` and ``import``: a session's variables to a JSON or YAML file (or
stdout) and back, through the client's export/import calls.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dspex_rx.shell.render import plain, table
from dspex_rx.shell.runner import emit, joined

FORMATS = ("json", "yaml")


def format_of(path: str | None, given: str | None) -> str:
    """The file format: ``given``, else from the file's extension, else JSON.

    >>> format_of("vars.yml", None), format_of(None, None), format_of("x.json", "yaml")
    ('yaml', 'json', 'yaml')
    """
    if given:
        return given
    suffix = Path(path).suffix.lower() if path else ""
    return "yaml" if suffix in (".yaml", ".yml") else "json"


async def export(args: argparse.Namespace) -> int:
    """``dspex-rx export [FILE]``: the session's variables as JSON (``--format yaml``) to
    FILE, or to stdout.

    Example: ``dspex-rx export vars.json --history`` writes the file and says how big.
    """
    fmt = format_of(args.file, args.format)
    async with joined(args) as session:
        data = await session.export_variables(
            fmt, include_history=args.history, filter_pattern=args.pattern
        )
    if args.file is None or args.file == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    Path(args.file).write_bytes(data)
    emit(args, {"file": args.file, "format": fmt, "bytes": len(data)},
         lambda: print(f"exported session {args.session} to {args.file} ({len(data)} bytes, "
                       f"{fmt})", file=sys.stderr))
    return 0


async def import_(args: argparse.Namespace) -> int:
    """``dspex-rx import FILE``: apply an export file to the session, validated whole
    first and applied in one commit or not at all (``--dry-run`` only reports).

    Example: ``dspex-rx import vars.yaml --merge keep`` prints what it did per variable.
    """
    fmt = format_of(args.file, args.format)
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    async with joined(args) as session:
        result = await session.import_variables(
            data, fmt, merge_strategy=args.merge, dry_run=args.dry_run
        )

    def human() -> None:
        table(["NAME", "ACTION", "VERSION", "NOTE"],
              [[d.get("name", ""), d.get("action", ""), d.get("version", "") or "-",
                d.get("message", "")] for d in result.get("details", [])])
        verb = "would import" if args.dry_run else "imported"
        print(f"{verb} {result['imported']}, skipped {result['skipped']}, errors "
              f"{result['errors']}")

    emit(args, plain(result), human)
    return 1 if result.get("errors") else 0
