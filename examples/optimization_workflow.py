"""Toward the spec's "Complete Optimization Workflow": the variables of an LLM program,
registered with their dependencies; a derived ``effective_temperature`` kept equal to
``base_temperature * style_modifier``; a second connection watching it; atomic batches,
compare-and-set with retry, the dependency graph, history and a rollback.

The optimizer itself comes with its own issue; here the "tuner" is a few explicit writes.
Everything runs on an embedded server and finishes in about a second.
"""

from __future__ import annotations

from typing import Any

import trio

import dspex_rx

VARIABLES: list[dict[str, Any]] = [
    {"name": "base_temperature", "type": "float", "initial_value": 0.7,
     "constraints": {"min": 0.0, "max": 2.0}, "description": "sampling temperature"},
    {"name": "style_modifier", "type": "float", "initial_value": 1.0,
     "constraints": {"min": 0.5, "max": 1.5}, "description": "per-style scaling"},
    {"name": "model", "type": "choice", "initial_value": "gpt-4",
     "constraints": {"choices": ["gpt-4", "claude-3", "llama-3"]}},
    {"name": "max_tokens", "type": "integer", "initial_value": 256,
     "constraints": {"min": 1, "max": 4096}, "dependencies": ["model"]},
    {"name": "reasoning_strategy", "type": "module", "initial_value": "ChainOfThought",
     "constraints": {"choices": ["Predict", "ChainOfThought", "ReAct"]},
     "dependencies": ["model"]},
]


def effective(base: float, style: float) -> float:
    """``effective_temperature``: the product, rounded so the printout stays readable."""
    return round(base * style, 6)


class Monitor:
    """The second program's view: prints every update of ``effective_temperature``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any, int]] = []  # (update_type, value, version)
        self.revision = 0
        self._progress = trio.Event()

    async def run(self, watch: dspex_rx.Watch) -> None:
        async for update in watch:
            self.seen.append((update.update_type, update.value, update.version))
            if update.update_type == "dependency_changed":
                meta = update.metadata
                sources = ", ".join(meta.get("source_variables", []))
                print(f"    [watcher] dependency_changed: {sources} changed at revision "
                      f"{meta.get('source_revision')} (value still {update.value:.3f}, "
                      f"v{update.version})")
                revision = int(meta.get("source_revision", update.revision))
            else:
                print(f"    [watcher] {update.update_type}: {update.value:.3f} "
                      f"(v{update.version}, by {update.source or 'the session'})")
                revision = update.revision
            self.revision = max(self.revision, revision)
            self._progress.set()
            self._progress = trio.Event()

    async def caught_up(self, revision: int) -> None:
        """Wait until the watcher has printed everything up to ``revision``."""
        while self.revision < revision:
            await self._progress.wait()


async def settle(
    session: dspex_rx.SessionContext, derived: Any, monitor: Monitor
) -> None:
    """Wait until the derived variable is recomputed and the watcher has shown it: the
    watcher hears of the last commit that changed it or one of its inputs."""
    await session.sync()
    await derived.settled()
    rows = await session.get_variables([derived.name, *derived.inputs], include_metadata=True)
    await monitor.caught_up(max(row["metadata"]["revision"] for row in rows.values()))


async def nudge(
    session: dspex_rx.SessionContext,
    name: str,
    delta: float,
    interfere: Any = None,
    attempts: int = 5,
) -> tuple[int, int]:
    """Read-modify-write with compare-and-set: retry when another writer got in between.
    Returns (new version, conflicts)."""
    conflicts = 0
    for _ in range(attempts):
        row = (await session.get_variables([name], include_metadata=True))[name]
        value, version = row["value"], row["metadata"]["version"]
        if interfere is not None and conflicts == 0:
            await interfere()  # someone else writes between our read and our write
        try:
            new_version = await session.set_variable(
                name, round(value + delta, 6), expected_version=version,
                metadata={"step": f"nudge {delta:+}"},
            )
        except dspex_rx.ConflictError as exc:
            conflicts += 1
            print(f"  ConflictError: read v{version}, the server is at v{exc.current_version};"
                  " re-reading and retrying")
            continue
        print(f"  {name}: {value} -> {round(value + delta, 6)} (v{version} -> v{new_version})")
        return new_version, conflicts
    raise RuntimeError(f"{name}: still conflicting after {attempts} attempts")


async def main() -> dict[str, Any]:
    """Run the workflow on an embedded server; returns the final values and what the
    watcher saw."""
    async with dspex_rx.connect(client_name="tuner") as session:
        print(f"embedded server at {session.target}, session {session.session_id}\n")
        ids = await session.register_variables(VARIABLES)
        print(f"registered {len(ids)} variables in one atomic call")
        derived = await session.derive(
            "effective_temperature", ["base_temperature", "style_modifier"], effective,
            type="float", constraints={"min": 0.0, "max": 3.0},
            description="base_temperature * style_modifier",
        )
        await session.add_dependency(
            "reasoning_strategy", "effective_temperature", dependency_type="optimization"
        )
        print("derived effective_temperature = base_temperature * style_modifier\n")

        print("dependency graph:")
        deps = await session.get_dependencies("effective_temperature")
        print(f"  effective_temperature depends on {[d['name'] for d in deps]}")
        for name in ("base_temperature", "model"):
            users = await session.get_dependents(name, include_transitive=True)
            shown = [f"{d['name']} (depth {d['depth']}, {d['dependency_type']})" for d in users]
            print(f"  {name} is used by {shown}")
        try:
            await session.add_dependency("base_temperature", "reasoning_strategy")
        except ValueError as exc:
            print(f"  refused: {exc}")

        assert session.target is not None
        monitor = Monitor()
        async with (
            dspex_rx.connect(session.target, session_id=session.session_id,
                             client_name="watcher") as other,
            trio.open_nursery() as nursery,
        ):
            watch = await other.watch_variable("effective_temperature")
            nursery.start_soon(monitor.run, watch)
            print("\na second connection watches effective_temperature:")
            await settle(session, derived, monitor)

            print("\nset base_temperature 0.7 -> 0.9:")
            await session.set_variable("base_temperature", 0.9, metadata={"step": "warmer"})
            await settle(session, derived, monitor)

            print("\none atomic batch: base_temperature 1.2 and style_modifier 0.8")
            before = derived.recomputations
            results = await session.update_variables(
                {"base_temperature": 1.2, "style_modifier": 0.8},
                metadata={"step": "batch"},
            )
            assert all(ok is True for ok in results.values()), results
            await settle(session, derived, monitor)
            batch_recomputations = derived.recomputations - before
            print(f"  recomputations for the batch: {batch_recomputations} "
                  "(from both new inputs, never one new and one old)")

            print("\nan atomic batch with one bad value changes nothing:")
            revision = session.revision
            results = await session.update_variables(
                {"base_temperature": 5.0, "style_modifier": 1.1}
            )
            for name, outcome in results.items():
                print(f"  {name}: {outcome}")
            assert session.revision == revision

            print("\ncompare-and-set with retry (another client writes in between):")

            async def colleague() -> None:
                await other.set_variable("base_temperature", 1.0, metadata={"step": "other"})
                print("  (the other connection set base_temperature to 1.0)")
                await settle(session, derived, monitor)  # keep the printout in order

            _, conflicts = await nudge(session, "base_temperature", +0.1, interfere=colleague)
            await settle(session, derived, monitor)

            print("\nhistory of base_temperature (newest first):")
            history = await session.get_variable_history("base_temperature", limit=10)
            for entry in history:
                print(f"  v{entry['version']}  {entry['value']:<4}  "
                      f"revision {entry['revision']:<3} {entry['metadata']}")

            target_version = next(e["version"] for e in history if e["value"] == 0.9)
            print(f"\nroll base_temperature back to v{target_version}:")
            new_version = await session.rollback_variable(
                "base_temperature", target_version, reason="the batch overshot"
            )
            await settle(session, derived, monitor)
            latest = (await session.get_variable_history("base_temperature", limit=1))[0]
            print(f"  now v{new_version} = {latest['value']} {latest['metadata']}")

            watch.cancel()

        derived.cancel()
        names = [*ids, "effective_temperature"]
        rows = await session.get_variables(names, include_metadata=True)
        print("\nsummary:")
        for name, row in rows.items():
            print(f"  {name:<22} v{row['metadata']['version']:<3} {row['value']!r}")
        kinds = [kind for kind, _, _ in monitor.seen]
        print(f"\nthe watcher saw {len(kinds)} updates ({kinds.count('value_change')} changes, "
              f"{kinds.count('dependency_changed')} dependency_changed); effective_temperature "
              f"was recomputed {derived.recomputations} times and written {derived.writes} "
              f"times; {conflicts} conflict retried")
        return {
            "values": {name: row["value"] for name, row in rows.items()},
            "watched": monitor.seen,
            "batch_recomputations": batch_recomputations,
            "conflicts": conflicts,
            "rollback_version": new_version,
        }


if __name__ == "__main__":
    trio.run(main)
