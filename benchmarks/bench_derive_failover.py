"""Owns the derivation failover benchmark: how long a derived variable goes without its
recomputation when its owner goes away and a standby takes over (issue #17).

The server runs in a separate process. Per trial a fresh client ``a`` derives ``d = 3x``
and owns it, a client ``b`` of the same session stands by, and a third client writes ``x``
and watches ``d``. Then ``a`` goes away in one of three ways, ``x`` is written, and the
clock runs until ``d`` shows the new ``3x``, written by ``b``:

* ``lapse``: ``a``'s derive task dies (no release, its connection stays up): the lease
  lapses one TTL after its last renewal and the standby notices at its next renewal, so
  the bound is TTL + TTL/3.
* ``release``: ``a`` calls ``cancel()``: the lease passes at once, the standby learns it
  at its next renewal (bound TTL/3).
* ``close``: ``a``'s connection closes: the server hands over as the client leaves
  (bound TTL/3).

Figures (one JSON line each): ``{"bench": "derive_failover", "mode": ..., "ttl": ...,
"p50": s, "max": s, "max_over_ttl": ...}``.

Run::

    .venv/bin/python benchmarks/bench_derive_failover.py            # about 30 s
    .venv/bin/python benchmarks/bench_derive_failover.py --quick    # about 3 s
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import trio
from _common import emit, make_note, percentile, require_positive, run_benchmark

import dspex_rx

note = make_note("derive_failover")
MODES = ("lapse", "release", "close")


async def trial(target: str, args: Any, mode: str, index: int,
                b: dspex_rx.SessionContext, c: dspex_rx.SessionContext) -> float:
    """Seconds from the owner going away to the standby's value being seen."""
    x, d = f"x_{mode}_{index}", f"d_{mode}_{index}"
    await c.register_variable(x, "float", 1.0)
    async with dspex_rx.connect(target, session_id=c.session_id, token=c.token) as a:
        owner = await a.derive(d, [x], lambda v: 3 * v, ttl=args.ttl)
        standby = await b.derive(d, [x], lambda v: 3 * v, ttl=args.ttl)
        assert (owner.role, standby.role) == ("owner", "standby")
        async with c.watch_variable(d, include_initial=False) as watch:
            start = time.perf_counter()
            if mode == "lapse":
                owner._scope.cancel()  # the task dies; nothing is released
            elif mode == "release":
                owner.cancel()
            if mode != "close":
                await c.set_variable(x, 2.0)
                with trio.fail_after(args.ttl * 3 + 10):  # a hang guard
                    async for update in watch:
                        if update.value == 6.0:
                            return time.perf_counter() - start
        # close: leave the connection's context, then write.
    start = time.perf_counter()
    await c.set_variable(x, 2.0)
    with trio.fail_after(args.ttl * 3 + 10):  # a hang guard
        while await c.get_variable(d, bypass_cache=True) != 6.0:
            await trio.sleep(0.005)
    return time.perf_counter() - start


async def client_main(target: str, args: Any) -> None:
    async with dspex_rx.connect(target) as c, dspex_rx.connect(
        target, session_id=c.session_id, token=c.token
    ) as b:
        for mode in MODES:
            times = []
            for index in range(args.trials):
                times.append(await trial(target, args, mode, index, b, c))
                note(f"{mode} #{index}: {times[-1]:.3f} s")
            emit({
                "bench": "derive_failover", "mode": mode, "ttl": args.ttl,
                "trials": args.trials, "p50": statistics.median(times),
                "max": percentile(times, 100),
                "max_over_ttl": percentile(times, 100) / args.ttl,
            })


def parse_args(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--ttl", type=float, default=1.5,
                        help="the derivation lease's TTL in seconds")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 trials of a 0.6 s TTL (about 3 s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.ttl = 2, 0.6
    require_positive(parser, args, "trials")
    if not args.ttl > 0:
        parser.error("--ttl must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(client_main, parse_args(argv), note)


if __name__ == "__main__":
    raise SystemExit(main())
