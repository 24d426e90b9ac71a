"""User patterns (regex constraints, globs) are matched with RE2: linear time, the same
answers as before for what RE2 supports, a clear refusal for what it does not.

None of these tests measures time. Catastrophic backtracking is ruled out by the engine
(every compiled matcher is an RE2 object), and the classic evil inputs are run at sizes
where Python's ``re`` would not finish in any test's lifetime (2**100000 paths), so a
regression would hang the test rather than pass it slowly.
"""

from __future__ import annotations

import fnmatch
import re

import pytest
import re2
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dspex_rx.core import patterns
from dspex_rx.core.patterns import compile_glob, compile_regex, glob_as_search, glob_to_regex
from dspex_rx.errors import InvalidValueError

EVIL_REGEXES = ["(a+)+$", "(a|aa)+$", "(a|a?)+$", "(.*a){20}$", "^(a+)+b"]


@pytest.mark.parametrize("pattern", EVIL_REGEXES)
def test_evil_regex_answers_without_backtracking(pattern: str) -> None:
    regex = compile_regex(pattern)
    assert isinstance(regex.engine, re2._Regexp)
    # The right answers, from Python's re on inputs too short to backtrack for long.
    small = "a" * 8 + "!"
    expected = (re.search(pattern, small) is not None, re.fullmatch(pattern, small) is not None)
    big = "a" * 100_000 + "!"
    assert (regex.search(big), regex.fullmatch(big)) == expected


def test_evil_glob_answers_without_backtracking() -> None:
    match = compile_glob("*a*a*a*a*a*a*a*a*b")
    assert match("a" * 100_000) is False
    assert match("a" * 100_000 + "b") is True


@pytest.mark.parametrize(
    ("pattern", "hint"),
    [
        (r"(a)\1", "backreferences are not supported"),
        (r"(?P<x>a)(?P=x)", "backreferences are not supported"),
        (r"a(?=b)", "lookahead is not supported"),
        (r"a(?!b)", "lookahead is not supported"),
        (r"(?<=a)b", "lookbehind is not supported"),
        (r"(?<!a)b", "lookbehind is not supported"),
        (r"a\Z", r"write \z"),
        ("(unclosed", "missing )"),
    ],
)
def test_unsupported_regex_is_refused_with_a_reason(pattern: str, hint: str) -> None:
    with pytest.raises(InvalidValueError, match="not a valid RE2 regular expression") as info:
        compile_regex(pattern)
    assert hint in str(info.value)


def test_pattern_length_is_bounded() -> None:
    compile_regex("a" * 100, max_length=100)
    with pytest.raises(InvalidValueError, match="101 characters long, above the "
                       "max_pattern_length limit of 100"):
        compile_regex("a" * 101, max_length=100)
    with pytest.raises(InvalidValueError, match="max_pattern_length"):
        compile_glob("*" * (patterns.DEFAULT_MAX_PATTERN_LENGTH + 1))


def test_patterns_are_compiled_without_capture_groups() -> None:
    # Guards #17: "(.*)" * 1000 against 5,000 characters took ~11 s with RE2 tracking every
    # group; only match/no-match is ever asked, so no group is kept.
    regex = compile_regex("(.*)" * 1000)
    assert regex.engine.options.never_capture is True
    assert regex.engine.groups == 0
    assert regex.fullmatch("x" * 5000) is True


def test_a_many_group_pattern_constraint_is_answered_at_full_size() -> None:
    # Guards #17: the largest legal pattern of groups, against a text 20x the 5,000 that
    # took ~11 s, would hold the test for minutes if groups were tracked.
    from dspex_rx.store import MemoryStore, VariableSpec

    store = MemoryStore()
    session, _, _ = store.initialize_session()
    pattern = "(.*)" * (patterns.DEFAULT_MAX_PATTERN_LENGTH // 4)
    store.register(session.id, [VariableSpec("text", "string", "x", {"pattern": pattern})],
                   actor="t")
    store.set(session.id, "text", "y" * 100_000, actor="t")
    assert store.get(session.id, "text").value == "y" * 100_000


def test_text_that_is_not_unicode_is_refused() -> None:
    with pytest.raises(InvalidValueError, match="not valid Unicode"):
        compile_regex("a").fullmatch("\ud800")


def test_regex_semantics_kept_for_common_patterns() -> None:
    regex = compile_regex(r"[a-z]+_\d{2,3}")
    assert regex.fullmatch("abc_12") and regex.fullmatch("x_123")
    assert not regex.fullmatch("abc_1") and not regex.fullmatch("ABC_12")
    assert not regex.fullmatch("abc_12\n")  # `$`-style trailing newline is not a match
    assert compile_regex("(?i)model").fullmatch("MoDeL")


GLOB_ALPHABET = st.sampled_from(list("ab-!^]\\[*?.z&~|:"))


@settings(max_examples=400, derandomize=True, deadline=None)
@given(st.text(GLOB_ALPHABET, max_size=10), st.text(st.sampled_from(list("ab-!^]\\[.z&\n:")),
                                                   max_size=8))
@example("[!]", "a")
@example("[]", "]")
@example("[z-a]", "q")
@example("[!z-a]", "q")
@example("[a-]", "-")
@example("[[:alpha:]]", "a]")
@example("[a-c-e]", "-")
@example("*.*", "a\nb.c")
def test_glob_matches_exactly_like_fnmatchcase(pattern: str, name: str) -> None:
    assert compile_glob(pattern)(name) is fnmatch.fnmatchcase(name, pattern)


def test_glob_is_compiled_to_re2() -> None:
    assert glob_to_regex("model.*") == r"(?s:model\x{2e}.*)"
    assert glob_to_regex("a**b") == "(?s:a.*b)"
    assert compile_glob("var_[0-9]?")("var_1x")


# ------------------------------------------------------------ where patterns are used


def test_pattern_constraint_uses_re2_and_names_the_variable() -> None:
    from dspex_rx.store import MemoryStore, VariableSpec

    store = MemoryStore()
    session, _, _ = store.initialize_session()
    with pytest.raises(InvalidValueError, match=r"variable 'code': constraint 'pattern' is not "
                       r"a valid regex \(RE2 syntax\).*backreferences are not supported"):
        store.register(session.id, [VariableSpec("code", "string", "aa",
                                                 {"pattern": r"(a)\1"})], actor="t")
    store.register(session.id, [VariableSpec("evil", "string", "a" * 10,
                                             {"pattern": "(a+)+$"})], actor="t")
    with pytest.raises(InvalidValueError, match="does not match pattern"):
        store.set(session.id, "evil", "a" * 100_000 + "!", actor="t")
    assert store.get(session.id, "evil").value == "a" * 10


def test_list_glob_uses_re2_and_is_bounded() -> None:
    from dspex_rx.store import MemoryStore, VariableSpec

    store = MemoryStore()
    session, _, _ = store.initialize_session()
    store.register(session.id, [VariableSpec("a" * 200, "integer", 1),
                                VariableSpec("model.t", "float", 0.5)], actor="t")
    # The store takes name-filter regexes (searched); clients translate globs first.
    assert [r.name for r in store.list(session.id, "(a+)+b")] == []
    assert [r.name for r in store.list(session.id, glob_as_search("*a*a*a*a*a*a*a*b"))] == []
    assert [r.name for r in store.list(session.id, glob_as_search("model.*"))] == ["model.t"]
    assert [r.name for r in store.list(session.id, r"^model\.")] == ["model.t"]
    with pytest.raises(InvalidValueError, match="max_pattern_length"):
        store.list(session.id, "a" * 5000)


async def test_cache_invalidate_pattern_uses_re2() -> None:
    from dspex_rx.client.cache import VariableCache

    cache = VariableCache(max_size=None, ttl=None)
    cache.put("var_x_1", 1, name="a" * 5000)
    assert await cache.invalidate_pattern("(a+)+b") == 0
    assert await cache.invalidate_pattern("*a*a*a*a*a*a*a*a*b", glob=True) == 0
    assert await cache.invalidate_pattern("var_x_*", glob=True) == 1
