"""VariableCache: policies, TTL, pinning, invalidation callbacks, batches, configuration."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from typing import Any

import pytest
import trio
import trio.testing

from dspex_rx import SessionContext
from dspex_rx.client.cache import VariableCache
from dspex_rx.errors import InvalidValueError


class FakeClock:
    """A hand-driven clock for TTL tests."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """An invalidation callback that records (tag, key, reason)."""

    def __init__(self, log: list[tuple[str, str, str]], tag: str) -> None:
        self.log = log
        self.tag = tag

    async def __call__(self, key: str, reason: str) -> None:
        await trio.sleep(0)  # really async: a checkpoint inside the callback
        self.log.append((self.tag, key, reason))


def make(
    policy: str = "lru", max_size: int | None = 3, ttl: float | None = None
) -> tuple[VariableCache, FakeClock]:
    clock = FakeClock()
    return VariableCache(ttl=ttl, max_size=max_size, eviction_policy=policy, clock=clock), clock


def stats(cache: VariableCache) -> tuple[int, int, int]:
    info = cache.info()
    return info["hits"], info["misses"], info["eviction_count"]


# --- policies -----------------------------------------------------------------------------------


async def test_lru_evicts_least_recently_used() -> None:
    cache, _ = make("lru")
    for key in "abc":
        cache.put(key, key.upper())
    assert cache.get("a") == "A"  # a is now most recent: b is the oldest use
    assert cache.get("zz") is None
    cache.put("d", "D")
    assert cache.keys() == ["a", "c", "d"]
    cache.put("c", "C2")  # a put is a use: a is now least recent
    cache.put("e", "E")
    assert sorted(cache.keys()) == ["c", "d", "e"]
    assert stats(cache) == (1, 1, 2)
    assert cache.lookup("c") == (True, "C2")
    assert cache.lookup("b") == (False, None)
    assert stats(cache) == (2, 2, 2)
    assert cache.info()["hit_rate"] == 0.5


async def test_lfu_evicts_least_frequently_used_ties_by_least_recent() -> None:
    cache, _ = make("lfu")
    for key in "abc":
        cache.put(key, key)
    cache.get("a")
    cache.get("a")
    cache.get("c")
    cache.get("b")  # b and c have one hit each; c was used longer ago
    cache.put("d", "d")  # the new entry is never the victim, though it has no hits
    assert sorted(cache.keys()) == ["a", "b", "d"]
    cache.put("e", "e")  # d (0 hits) goes
    assert sorted(cache.keys()) == ["a", "b", "e"]
    assert stats(cache) == (4, 0, 2)


async def test_lfu_never_hit_ties_go_to_oldest_put() -> None:
    cache, _ = make("lfu")
    for key in "abc":
        cache.put(key, key)
    cache.put("d", "d")
    assert cache.keys() == ["b", "c", "d"]
    cache.get("b")
    cache.put("e", "e")  # c is the oldest with zero hits
    assert cache.keys() == ["b", "d", "e"]
    assert cache.info()["eviction_count"] == 2


async def test_fifo_evicts_oldest_inserted_regardless_of_access() -> None:
    cache, _ = make("fifo")
    for key in "abc":
        cache.put(key, key)
    for _ in range(5):
        assert cache.get("a") == "a"
    cache.put("a", "a2")  # replacing keeps a's place in line
    cache.put("d", "d")
    assert cache.keys() == ["b", "c", "d"]
    cache.put("e", "e")
    assert cache.keys() == ["c", "d", "e"]
    assert stats(cache) == (5, 0, 2)


async def test_unbounded_never_evicts() -> None:
    cache, _ = make(max_size=None)
    for i in range(1000):
        cache.put(f"k{i}", i)
    assert len(cache) == 1000
    assert cache.info()["eviction_count"] == 0


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo"])
async def test_policies_match_a_reference_model(policy: str) -> None:
    """Random operations against a naive O(n) model of the documented rules."""
    rng = random.Random(f"cache-{policy}")
    max_size, ttl = 5, 10.0
    cache, clock = make(policy, max_size=max_size, ttl=ttl)
    # model: key -> [stamp, pinned, hits, seq_inserted, seq_used]
    model: dict[str, list[Any]] = {}
    seq = 0
    evictions = expired = 0

    def tick() -> int:
        nonlocal seq
        seq += 1
        return seq

    def purge() -> None:
        nonlocal expired
        for key in [k for k, v in model.items() if not v[1] and clock.now - v[0] >= ttl]:
            del model[key]
            expired += 1

    def rank(v: list[Any]) -> tuple[int, ...]:
        if policy == "lru":
            return (v[4],)
        if policy == "fifo":
            return (v[3],)
        return (v[2], v[4])

    def make_room() -> None:
        nonlocal evictions
        pool = {k: v for k, v in model.items() if not v[1]}
        while len(pool) >= max_size:
            victim = min(pool, key=lambda k: rank(pool[k]))
            del pool[victim], model[victim]
            evictions += 1

    keys = [f"k{i}" for i in range(9)]
    for _ in range(3000):
        op = rng.random()
        key = rng.choice(keys)
        if op < 0.1:
            clock.advance(rng.choice([0.5, 1.0, 3.0]))
            continue
        purge()
        if op < 0.45:
            found, entry = cache.lookup(key)
            assert found == (key in model)
            if found:
                assert entry == model[key][5]
                model[key][2] += 1
                model[key][4] = tick()
        elif op < 0.85:
            pin = rng.choice([None, None, None, False, True])
            value = rng.random()
            cache.put(key, value, pinned=pin)
            old = model.get(key)
            s = tick()
            if old is None:
                pinned = bool(pin)
                if not pinned:
                    make_room()
                model[key] = [clock.now, pinned, 0, s, s, value]
            else:
                now_pinned = old[1] if pin is None else pin
                if old[1] and not now_pinned:
                    make_room()
                    s = tick()
                    model[key] = [clock.now, False, 0, s, s, value]
                else:
                    model[key] = [clock.now, now_pinned, old[2], old[3], s, value]
        elif op < 0.93:
            assert cache.pin(key) == (key in model)
            if key in model:
                model[key][1] = True
        else:
            assert cache.unpin(key) == (key in model)
            if key in model and model[key][1]:
                make_room()
                s = tick()
                model[key][:5] = [clock.now, False, 0, s, s]
        assert sorted(cache.keys()) == sorted(model)
        info = cache.info()
        assert info["eviction_count"] == evictions
        assert info["expired_count"] == expired
        assert info["pinned"] == sum(1 for v in model.values() if v[1])
    assert evictions > 50
    assert expired > 20


# --- TTL ----------------------------------------------------------------------------------------


async def test_ttl_boundary_age_equal_to_ttl_is_expired() -> None:
    cache, clock = make(ttl=10.0, max_size=None)
    log: list[tuple[str, str, str]] = []
    cache.subscribe_invalidation("a", Recorder(log, "s"))
    cache.put("a", 1)
    clock.advance(9.999)
    assert cache.lookup("a") == (True, 1)
    clock.advance(0.001)  # age == ttl exactly
    assert cache.lookup("a") == (False, None)
    info = cache.info()
    assert (info["hits"], info["misses"], info["expired_count"]) == (1, 1, 1)
    assert info["size"] == 0
    assert log == []  # queued by the synchronous lookup ...
    assert await cache.flush_invalidations() == 1  # ... and awaited here
    assert log == [("s", "a", "expired")]


async def test_ttl_counts_from_the_last_put() -> None:
    cache, clock = make(ttl=10.0)
    cache.put("a", 1)
    clock.advance(8)
    cache.put("a", 2)
    clock.advance(8)
    assert cache.get("a") == 2
    clock.advance(2)
    assert "a" not in cache
    assert cache.info()["expired_count"] == 1


async def test_ttl_none_never_expires() -> None:
    cache, clock = make(ttl=None)
    cache.put("a", 1)
    clock.advance(1e9)
    assert cache.get("a") == 1


async def test_ttl_zero_disables_caching_but_keeps_pinned() -> None:
    cache, _ = make(ttl=0)
    cache.put("a", 1)
    assert len(cache) == 0
    assert cache.lookup("a") == (False, None)
    cache.put("w", 2, pinned=True)
    assert cache.get("w") == 2
    cache.put("w", 3, pinned=False)  # no longer pinned: not cacheable
    assert "w" not in cache
    assert stats(cache) == (1, 1, 0)


async def test_ttl_with_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    cache = VariableCache(ttl=5.0)  # default clock: trio.current_time, here virtual
    cache.put("a", 1)
    await trio.sleep(4.9)
    assert "a" in cache
    await trio.sleep(0.1)
    assert "a" not in cache


async def test_shorter_ttl_via_configure_expires_at_once() -> None:
    cache, clock = make(ttl=60.0)
    cache.put("a", 1)
    clock.advance(30)
    cache.put("b", 2)
    cache.configure(ttl=20.0)
    assert cache.keys() == ["b"]
    cache.configure(ttl=None)
    clock.advance(1000)
    assert cache.keys() == ["b"]


# --- pinning ------------------------------------------------------------------------------------


async def test_pinned_entries_survive_ttl_and_eviction_and_do_not_count() -> None:
    cache, clock = make("lru", max_size=2, ttl=10.0)
    cache.put("w1", "W1", pinned=True)
    cache.put("w2", "W2", pinned=True)
    cache.put("a", "A")
    cache.put("b", "B")  # two unpinned fit: pinned ones do not count toward max_size
    assert sorted(cache.keys()) == ["a", "b", "w1", "w2"]
    cache.put("c", "C")  # evicts a, never a pinned entry
    assert sorted(cache.keys()) == ["b", "c", "w1", "w2"]
    clock.advance(100)
    assert sorted(cache.keys()) == ["w1", "w2"]
    assert cache.get("w1") == "W1"
    info = cache.info()
    assert (info["size"], info["pinned"], info["eviction_count"], info["expired_count"]) == (
        2,
        2,
        1,
        2,
    )


async def test_unpin_starts_ttl_now_and_put_keeps_pin_state() -> None:
    cache, clock = make(ttl=10.0)
    cache.put("w", 1, pinned=True)
    clock.advance(100)
    cache.put("w", 2)  # pinned=None keeps the pin
    assert cache.is_pinned("w")
    clock.advance(100)
    assert cache.unpin("w") is True
    assert not cache.is_pinned("w")
    clock.advance(9.5)
    assert cache.get("w") == 2
    clock.advance(0.5)
    assert "w" not in cache
    assert cache.unpin("w") is False
    assert cache.pin("w") is False


async def test_pin_existing_entry_protects_it() -> None:
    cache, clock = make("fifo", max_size=2, ttl=10.0)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.pin("a")
    cache.put("c", 3)
    cache.put("d", 4)  # b evicted (a is out of the pool)
    assert cache.keys() == ["a", "c", "d"]
    clock.advance(50)
    assert cache.keys() == ["a"]


async def test_unpin_into_a_full_pool_evicts_another() -> None:
    cache, _ = make("lfu", max_size=2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("w", 3, pinned=True)
    cache.get("a")
    cache.unpin("w")  # w re-enters the pool; b (0 hits, oldest) goes, not w
    assert sorted(cache.keys()) == ["a", "w"]


# --- configure ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "survivors"),
    [("lru", ["b", "d"]), ("lfu", ["a", "b"]), ("fifo", ["c", "d"])],
)
async def test_configure_shrinking_evicts_per_policy(policy: str, survivors: list[str]) -> None:
    cache, _ = make(policy, max_size=4)
    log: list[tuple[str, str, str]] = []
    for key in "abcd":
        cache.put(key, key)
        cache.subscribe_invalidation(key, Recorder(log, "s"))
    cache.put("w", "w", pinned=True)
    cache.get("a")
    cache.get("a")
    cache.get("b")
    cache.put("d", "d2")
    cache.configure(max_size=2)
    assert sorted(set(cache.keys()) - {"w"}) == survivors
    assert "w" in cache
    assert cache.info()["eviction_count"] == 2
    await cache.flush_invalidations()
    assert sorted(key for _, key, _ in log) == sorted(set("abcd") - set(survivors))
    assert {reason for _, _, reason in log} == {"evicted"}


async def test_switching_policy_keeps_entries_and_applies_new_rule() -> None:
    cache, _ = make("lru", max_size=3)
    for key in "abc":
        cache.put(key, key)
    cache.get("a")
    cache.get("a")
    cache.get("b")
    cache.configure(eviction_policy="fifo")
    assert cache.keys() == ["a", "b", "c"]
    cache.put("d", "d")  # fifo: a, though most used
    assert cache.keys() == ["b", "c", "d"]
    cache.configure(eviction_policy="lfu")
    cache.put("e", "e")  # lfu: c and d have 0 hits, c used longer ago
    assert cache.keys() == ["b", "d", "e"]
    cache.configure(eviction_policy="lru")
    cache.put("f", "f")  # lru: b was last used before d and e were put
    assert cache.keys() == ["d", "e", "f"]
    assert cache.eviction_policy == "lru"


async def test_configure_omitted_arguments_are_unchanged_and_none_means_no_limit() -> None:
    cache, _ = make("lfu", max_size=3, ttl=5.0)
    cache.configure()
    assert (cache.ttl, cache.max_size, cache.eviction_policy) == (5.0, 3, "lfu")
    cache.configure(max_size=None)
    assert (cache.ttl, cache.max_size) == (5.0, None)
    cache.configure(ttl=None)
    info = cache.info()
    assert (info["ttl"], info["max_size"], info["eviction_policy"]) == (None, None, "lfu")


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"ttl": -1}, "ttl"),
        ({"ttl": float("nan")}, "ttl"),
        ({"ttl": "60"}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"max_size": 0}, "max_size"),
        ({"max_size": -5}, "max_size"),
        ({"max_size": 2.5}, "max_size"),
        ({"eviction_policy": "random"}, "eviction_policy"),
        ({"eviction_policy": "LRU"}, "eviction_policy"),
    ],
)
async def test_bad_config_raises_naming_the_argument(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(InvalidValueError, match=argument) as excinfo:
        VariableCache(**kwargs)
    assert excinfo.value.details["argument"] == argument
    assert isinstance(excinfo.value, ValueError)
    cache = VariableCache(ttl=5.0, max_size=3, eviction_policy="fifo")
    with pytest.raises(InvalidValueError, match=argument):
        cache.configure(max_size=1, **kwargs) if argument != "max_size" else cache.configure(
            ttl=1.0, **kwargs
        )
    assert (cache.ttl, cache.max_size, cache.eviction_policy) == (5.0, 3, "fifo")


async def test_policy_error_lists_allowed_values() -> None:
    with pytest.raises(InvalidValueError, match="'lru', 'lfu', 'fifo'"):
        VariableCache(eviction_policy="mru")


# --- invalidation -------------------------------------------------------------------------------


async def test_invalidate_awaits_callbacks_in_subscription_order() -> None:
    cache, _ = make(max_size=None)
    log: list[tuple[str, str, str]] = []
    cache.put("a", 1, pinned=True)
    cache.subscribe_invalidation("a", Recorder(log, "first"))
    cache.subscribe_invalidation("a", Recorder(log, "second"))
    cache.subscribe_invalidation("b", Recorder(log, "other"))
    assert await cache.invalidate("a", reason="remote_update") is True
    assert log == [("first", "a", "remote_update"), ("second", "a", "remote_update")]
    assert "a" not in cache
    assert await cache.invalidate("a") is False  # nothing cached: no callbacks
    assert len(log) == 2
    cache.put("a", 2)  # the subscription outlives the entry
    assert await cache.invalidate("a")
    assert log[-1] == ("second", "a", "invalidated")


async def test_invalidate_pattern_by_name_and_by_key() -> None:
    cache, _ = make(max_size=None)
    log: list[tuple[str, str, str]] = []
    cache.put("var_model.a_1", 1, name="model.a")
    cache.put("var_model.b_2", 2, name="model.b", pinned=True)
    cache.put("var_temp_3", 3, name="temperature")
    cache.put("opt_x", 4)  # no name
    for key in ["var_model.a_1", "var_model.b_2", "var_temp_3", "opt_x"]:
        cache.subscribe_invalidation(key, Recorder(log, "s"))
    assert await cache.invalidate_pattern("^model.*$", reason="model_switch") == 2
    assert log == [
        ("s", "var_model.a_1", "model_switch"),
        ("s", "var_model.b_2", "model_switch"),
    ]
    assert cache.keys() == ["var_temp_3", "opt_x"]
    assert await cache.invalidate_pattern("opt_*", glob=True) == 1  # matched by key
    assert log[-1] == ("s", "opt_x", "invalidated")
    assert await cache.invalidate_pattern("Temp*", glob=True) == 0  # case-sensitive
    assert await cache.invalidate_pattern("^Temp") == 0  # case-sensitive
    assert await cache.invalidate_pattern("nothing") == 0
    assert cache.keys() == ["var_temp_3"]


async def test_invalidate_pattern_takes_a_searched_regex_as_the_spec_and_globs_on_request(
) -> None:
    # Issue #12: spec regexes ('.*model.*') matched nothing as globs, silently.
    cache, _ = make(max_size=None)
    for key, name in [("k1", "model"), ("k2", "model.top_p"), ("k3", "my_model"),
                      ("k4", "temperature")]:
        cache.put(key, key, name=name)
    assert await cache.invalidate_pattern("^model$") == 1
    assert cache.keys() == ["k2", "k3", "k4"]
    assert await cache.invalidate_pattern("model.*", glob=True) == 1  # glob: whole name
    assert cache.keys() == ["k3", "k4"]
    assert await cache.invalidate_pattern(r".*model.*") == 1  # searched anywhere
    assert cache.keys() == ["k4"]
    with pytest.raises(ValueError, match=r"pattern '\(temp' is not a valid RE2 regular "
                                         r"expression: missing \)"):
        await cache.invalidate_pattern("(temp")
    with pytest.raises(ValueError, match="lookahead is not supported"):
        await cache.invalidate_pattern("temp(?=x)")
    assert cache.keys() == ["k4"]  # a refused pattern removed nothing


async def test_get_batch_without_fetch_missing_returns_what_is_cached() -> None:
    cache, _ = make(max_size=None)
    cache.put("a", 1)
    cache.put("c", 3)
    assert await cache.get_batch(["a", "b", "c"]) == {"a": 1, "c": 3}
    info = cache.info()
    assert (info["hits"], info["misses"]) == (2, 1)


async def test_put_without_name_keeps_the_name() -> None:
    cache, _ = make(max_size=None)
    cache.put("id1", 1, name="alpha")
    cache.put("id1", 2)
    assert await cache.invalidate_pattern("alpha") == 1


async def test_unsubscribe_stops_callbacks_including_queued_ones() -> None:
    cache, _ = make("lru", max_size=1)
    log: list[tuple[str, str, str]] = []
    sub = cache.subscribe_invalidation("a", Recorder(log, "s"))
    keep = cache.subscribe_invalidation("a", Recorder(log, "keep"))
    cache.put("a", 1)
    cache.put("b", 2)  # evicts a; callbacks queued
    assert cache.unsubscribe_invalidation(sub) is True
    assert cache.unsubscribe_invalidation(sub) is False
    assert cache.unsubscribe_invalidation("inv-999") is False
    assert await cache.flush_invalidations() == 1
    assert log == [("keep", "a", "evicted")]
    cache.unsubscribe_invalidation(keep)
    cache.put("a", 1)
    await cache.invalidate("a")
    assert log == [("keep", "a", "evicted")]


async def test_raising_callback_is_logged_and_does_not_stop_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache, _ = make(max_size=None)
    log: list[tuple[str, str, str]] = []

    async def boom(key: str, reason: str) -> None:
        raise RuntimeError("callback failed")

    cache.subscribe_invalidation("a", Recorder(log, "before"))
    cache.subscribe_invalidation("a", boom)
    cache.subscribe_invalidation("a", Recorder(log, "after"))
    cache.put("a", 1)
    with caplog.at_level(logging.ERROR, logger="dspex_rx.cache"):
        assert await cache.invalidate("a")
    assert log == [("before", "a", "invalidated"), ("after", "a", "invalidated")]
    assert any("invalidation_callback_failed" in r.getMessage() for r in caplog.records)
    assert any("callback failed" in r.getMessage() for r in caplog.records)


async def test_queued_callbacks_run_before_an_invalidate_and_in_order() -> None:
    cache, clock = make("fifo", max_size=2, ttl=10.0)
    log: list[tuple[str, str, str]] = []
    for key in "abcd":
        cache.subscribe_invalidation(key, Recorder(log, "s"))
    cache.put("a", 1)
    clock.advance(4)
    cache.put("b", 2)
    clock.advance(4)
    cache.put("c", 3)  # evicts a
    clock.advance(6)  # b expires (age 10), c does not (age 6)
    assert cache.keys() == ["c"]
    cache.put("d", 4)
    cache.clear()
    assert len(cache) == 0
    await cache.invalidate("zzz")
    assert log == [
        ("s", "a", "evicted"),
        ("s", "b", "expired"),
        ("s", "c", "cleared"),
        ("s", "d", "cleared"),
    ]


async def test_callback_may_reenter_the_cache() -> None:
    cache, _ = make(max_size=None)
    seen: list[str] = []

    async def cascade(key: str, reason: str) -> None:
        seen.append(key)
        await cache.invalidate("child", reason="parent_" + reason)

    async def child(key: str, reason: str) -> None:
        seen.append(f"{key}:{reason}")

    cache.subscribe_invalidation("parent", cascade)
    cache.subscribe_invalidation("child", child)
    cache.put("parent", 1)
    cache.put("child", 2)
    await cache.invalidate("parent")
    assert seen == ["parent", "child:parent_invalidated"]


# --- get_batch ----------------------------------------------------------------------------------


async def test_get_batch_fetches_missing_once_in_request_order() -> None:
    cache, _ = make(max_size=None)
    cache.put("b", "B")
    cache.put("d", "D")
    calls: list[list[str]] = []

    async def fetch(keys: list[str]) -> Mapping[str, Any]:
        calls.append(keys)
        return {k: k.upper() for k in keys if k != "x"} | {"unasked": 0}

    result = await cache.get_batch(["c", "b", "a", "c", "x", "d"], fetch)
    assert calls == [["c", "a", "x"]]
    assert result == {"c": "C", "b": "B", "a": "A", "d": "D"}
    assert list(result) == ["c", "b", "a", "d"]
    assert "x" not in cache and "unasked" not in cache
    assert stats(cache) == (2, 3, 0)
    assert await cache.get_batch(["a", "b", "c"], fetch) == {"a": "A", "b": "B", "c": "C"}
    assert len(calls) == 1  # nothing missing: not called
    assert await cache.get_batch([], fetch) == {}
    assert len(calls) == 1


async def test_concurrent_overlapping_batches_fetch_each_key_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = VariableCache(ttl=60.0, max_size=None)
    calls: list[list[str]] = []

    async def fetch(keys: list[str]) -> Mapping[str, Any]:
        calls.append(keys)
        await trio.sleep(1.0)  # the second batch starts while this one is fetching
        return {k: f"v-{k}" for k in keys}

    results: dict[str, dict[str, Any]] = {}

    async def batch(tag: str, keys: list[str]) -> None:
        results[tag] = await cache.get_batch(keys, fetch)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batch, "first", ["a", "b"])
        await trio.sleep(0.5)
        nursery.start_soon(batch, "second", ["b", "c", "a"])
    assert calls == [["a", "b"], ["c"]]
    assert results["first"] == {"a": "v-a", "b": "v-b"}
    assert results["second"] == {"b": "v-b", "c": "v-c", "a": "v-a"}


async def test_get_batch_keeps_an_entry_put_during_the_fetch() -> None:
    cache, _ = make(max_size=None)
    started = trio.Event()
    release = trio.Event()

    async def fetch(keys: list[str]) -> Mapping[str, Any]:
        started.set()
        await release.wait()
        return {k: "fetched" for k in keys}

    result: dict[str, Any] = {}

    async def run() -> None:
        result.update(await cache.get_batch(["a", "b"], fetch))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await started.wait()
        cache.put("a", "pushed", pinned=True)
        release.set()
    assert result == {"a": "pushed", "b": "fetched"}
    assert cache.get("a") == "pushed" and cache.is_pinned("a")


async def test_get_batch_names_entries_and_flushes_evictions() -> None:
    cache, _ = make("fifo", max_size=2)
    log: list[tuple[str, str, str]] = []
    cache.subscribe_invalidation("old", Recorder(log, "s"))
    cache.put("old", 0)

    async def fetch(keys: list[str]) -> Mapping[str, Any]:
        return {k: {"name": f"n.{k}"} for k in keys}

    result = await cache.get_batch(["a", "b", "c"], fetch, name_of=lambda e: e["name"])
    assert list(result) == ["a", "b", "c"]  # all fetched entries returned, even if evicted
    assert cache.keys() == ["b", "c"]
    assert log == [("s", "old", "evicted")]  # awaited before get_batch returned
    assert await cache.invalidate_pattern("n.*", glob=True) == 2


async def test_get_batch_fetch_error_propagates_and_stores_nothing() -> None:
    cache, _ = make(max_size=None)

    async def fetch(keys: list[str]) -> Mapping[str, Any]:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await cache.get_batch(["a"], fetch)
    assert len(cache) == 0

    async def ok(keys: list[str]) -> Mapping[str, Any]:
        return {k: 1 for k in keys}

    assert await cache.get_batch(["a"], ok) == {"a": 1}  # the lock was released


# --- small reads --------------------------------------------------------------------------------


async def test_reads_without_stats_and_clear() -> None:
    cache, _ = make(max_size=None)
    assert cache.info()["hit_rate"] == 0.0
    cache.put("a", 1)
    cache.put("b", None)
    assert "a" in cache and "zz" not in cache
    assert len(cache) == 2 and cache.keys() == ["a", "b"]
    assert cache.lookup("b") == (True, None)  # a cached None is still a hit
    assert cache.get("zz", "dflt") == "dflt"
    assert stats(cache) == (1, 1, 0)
    cache.clear()
    assert len(cache) == 0
    assert stats(cache) == (1, 1, 0)  # stats survive clear
    info = cache.info()
    assert set(info) == {
        "size",
        "pinned",
        "ttl",
        "max_size",
        "eviction_policy",
        "hits",
        "misses",
        "hit_rate",
        "eviction_count",
        "expired_count",
    }


def test_construct_outside_trio_with_default_clock() -> None:
    cache = VariableCache()  # constructing does not touch the clock
    # The spec's defaults for a standalone cache (issue #12).
    assert (cache.ttl, cache.max_size, cache.eviction_policy) == (1.0, 1000, "lru")


def test_a_standalone_cache_works_in_an_asyncio_program() -> None:
    # Guards issue #12: the spec's VariableCache is used from asyncio; the default clock
    # and get_batch's lock were trio's, so any call outside a trio run failed.
    fetched: list[list[str]] = []
    seen: list[tuple[str, str]] = []

    async def fetch(keys: list[str]) -> Mapping[str, Any]:
        fetched.append(keys)
        await asyncio.sleep(0)  # a real await on asyncio, with the batch lock held
        return {k: k.upper() for k in keys}

    async def on_invalidate(key: str, reason: str) -> None:
        seen.append((key, reason))

    async def main() -> tuple[dict[str, Any], dict[str, Any], int]:
        cache = VariableCache(ttl=60.0)
        cache.subscribe_invalidation("model_a", on_invalidate)
        first, second = await asyncio.gather(
            cache.get_batch(["model_a", "temp"], fetch),
            cache.get_batch(["temp", "model_b"], fetch),
        )
        removed = await cache.invalidate_pattern("^model_", reason="switch")
        return first, second, removed

    first, second, removed = asyncio.run(main())
    assert first == {"model_a": "MODEL_A", "temp": "TEMP"}
    assert second == {"temp": "TEMP", "model_b": "MODEL_B"}
    assert fetched == [["model_a", "temp"], ["model_b"]]  # the lock kept 'temp' to one fetch
    assert removed == 2
    assert seen == [("model_a", "switch")]


# --- what the actors use ------------------------------------------------------------------------


async def test_lookup_without_count_is_a_pure_peek() -> None:
    cache, clock = make("lru", max_size=2, ttl=10.0)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.lookup("a", count=False) == (True, 1)
    assert cache.lookup("zz", count=False) == (False, None)
    assert stats(cache) == (0, 0, 0)
    cache.put("c", 3)  # the peek did not make a recent: a goes
    assert cache.keys() == ["b", "c"]
    clock.advance(10)
    assert cache.lookup("b", count=False) == (False, None)  # expired entries are not seen


async def test_invalidate_nowait_queues_callbacks() -> None:
    cache, _ = make(max_size=None)
    log: list[tuple[str, str, str]] = []
    cache.subscribe_invalidation("a", Recorder(log, "s"))
    cache.put("a", 1, pinned=True)
    assert cache.invalidate_nowait("a", reason="deleted") is True
    assert "a" not in cache and log == []
    assert cache.invalidate_nowait("a") is False
    await cache.flush_invalidations()
    assert log == [("s", "a", "deleted")]


async def test_rekey_moves_entry_pin_name_and_subscriptions() -> None:
    cache, clock = make("fifo", max_size=2, ttl=10.0)
    log: list[tuple[str, str, str]] = []
    cache.subscribe_invalidation("temperature", Recorder(log, "s"))
    cache.put("temperature", "T", name="temperature")
    cache.put("other", "O")
    clock.advance(5)
    assert cache.rekey("temperature", "var_temperature_1") is True
    assert cache.keys() == ["other", "var_temperature_1"]
    assert cache.get("var_temperature_1") == "T"
    cache.put("x", "X")  # fifo: the rekeyed entry counts as newly put, so "other" goes
    assert cache.keys() == ["var_temperature_1", "x"]
    clock.advance(9)  # TTL restarted at the rekey
    assert "var_temperature_1" in cache
    assert await cache.invalidate_pattern("^temp") == 1  # the name moved with it
    assert log == [("s", "var_temperature_1", "invalidated")]
    cache.put("w", "W", pinned=True)
    assert cache.rekey("w", "w2") and cache.is_pinned("w2")
    assert cache.rekey("nope", "nope2") is False
    assert cache.rekey("w2", "w2") is True


# -------------------------------------------------------------------- the session's cache


# Guards: get_batch with session.fetch_missing returned CacheEntry objects, not values.
async def test_get_batch_with_the_sessions_fetch_missing_returns_values(
    session: SessionContext,
) -> None:
    # Issue #3: get_batch(var_ids, fetch_missing) with the session's own default loader.
    # fetch_missing already stored a CacheEntry under the id, so get_batch treats it as
    # "put by someone else" and returns the CacheEntry; hits return CacheEntry objects too.
    ids = await session.register_variables(
        [{"name": "bx", "type": "integer", "initial_value": 5},
         {"name": "by", "type": "integer", "initial_value": 6}]
    )
    await session.cache.invalidate_pattern(".*", "reset")
    got = await session.cache.get_batch([ids["bx"], ids["by"]], session.fetch_missing)
    assert got == {ids["bx"]: 5, ids["by"]: 6}
