"""Every user-supplied pattern is matched here, with RE2: linear time, whatever the pattern.

Python's ``re`` backtracks: ``(a+)+$`` against ``"a" * 30 + "!"`` takes minutes, and
``fnmatch`` builds its regexes for ``re`` too. A hostile client could send such a pattern
as a ``pattern`` constraint or a ``list_variables`` glob and stall the server's one event
loop. RE2 (``google-re2``) matches in time linear in the text, refuses what it cannot do
in linear time (backreferences, lookaround) and bounds the memory of a compiled pattern.

- ``compile_regex(pattern)``: a user regular expression (the ``pattern`` constraint of
  string variables); ``fullmatch`` semantics are the caller's choice (``matcher.fullmatch``).
- ``compile_name_filter(pattern)``: the API's name filters (``list_variables``,
  ``filter_pattern``, ``invalidate_pattern``): an RE2 regex searched in the name, as
  ``re.search`` would; ``glob_as_search`` turns an explicit glob (``glob=True``) into one.
- ``compile_glob(pattern)``: an fnmatch-style glob (``*``, ``?``, ``[seq]``, ``[!seq]``,
  case-sensitive, matching the whole name), translated to an RE2 regex with exactly
  ``fnmatch.fnmatchcase`` semantics.

Both refuse patterns longer than ``max_length`` characters (default
``DEFAULT_MAX_PATTERN_LENGTH``) and raise ``InvalidValueError`` (a ``ValueError``) with a
message naming what is wrong. Compiled patterns are cached.

No gRPC here; the store (``list``), the types module (``pattern``) and the client cache
(``invalidate_pattern``) call this module, and so should anything else that matches a
user pattern (an export's ``filter_pattern``): one place to keep linear.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import re2

from dspex_rx.errors import InvalidValueError

DEFAULT_MAX_PATTERN_LENGTH = 4096
# Memory one compiled pattern may use (program and DFA cache); RE2 refuses to compile a
# bigger program ("pattern too large") and falls back to a slower, still linear matcher
# when the DFA cache fills.
REGEX_MAX_MEM = 8 << 20
_CACHE_SIZE = 256


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr
    options.max_mem = REGEX_MAX_MEM
    # Only match/no-match is ever asked. With capture on, RE2 tracks every group through
    # its slower engines: "(.*)" * 1000 against 5,000 characters took ~11 s on the server
    # loop; without, ~0.1 ms.
    options.never_capture = True
    return options


class Regex:
    """A compiled user regex (RE2). ``fullmatch``/``search`` return booleans.

    >>> r = compile_regex("[a-z]+")
    >>> r.fullmatch("abc"), r.fullmatch("abc1"), r.search("1abc")
    (True, False, True)
    """

    __slots__ = ("_compiled", "pattern")

    def __init__(self, pattern: str, compiled: Any) -> None:
        self.pattern = pattern
        self._compiled = compiled

    @property
    def engine(self) -> Any:
        """The underlying ``re2`` object (tests check the engine is RE2).

        >>> type(compile_regex("a").engine).__module__
        're2'
        """
        return self._compiled

    def fullmatch(self, text: str) -> bool:
        """Whether the whole of ``text`` matches.

        >>> compile_regex("a|b").fullmatch("b")
        True
        """
        try:
            return self._compiled.fullmatch(text) is not None
        except UnicodeEncodeError as exc:
            raise _not_unicode("text", exc) from None

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in ``text``.

        >>> compile_regex("b").search("abc")
        True
        """
        try:
            return self._compiled.search(text) is not None
        except UnicodeEncodeError as exc:
            raise _not_unicode("text", exc) from None

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


def _not_unicode(what: str, exc: UnicodeEncodeError) -> InvalidValueError:
    return InvalidValueError(
        f"{what} is not valid Unicode ({exc.reason} at position {exc.start})"
    )


def _check_length(kind: str, pattern: Any, max_length: int | None) -> str:
    if not isinstance(pattern, str):
        raise InvalidValueError(f"a {kind} must be a string, got {type(pattern).__name__}")
    if max_length is not None and len(pattern) > max_length:
        reason = (
            f"{len(pattern)} characters long, above the max_pattern_length limit of "
            f"{max_length}"
        )
        raise InvalidValueError(f"{kind} is {reason}", reason=reason)
    return pattern


_HINTS = (
    ("(?=", "lookahead is not supported"),
    ("(?!", "lookahead is not supported"),
    ("(?<=", "lookbehind is not supported"),
    ("(?<!", "lookbehind is not supported"),
    ("(?P=", "backreferences are not supported"),
    ("\\Z", "write \\z for the end of the text"),
)


def _rejection(pattern: str, exc: Exception) -> str:
    reason = exc.args[0] if exc.args else exc
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    text = str(reason)
    hints = [hint for token, hint in _HINTS if token in pattern]
    if re.search(r"invalid escape sequence: \\[1-9]", text):
        hints.append("backreferences are not supported")
    return text + (f" ({'; '.join(dict.fromkeys(hints))})" if hints else "")


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compile(pattern: str) -> Regex:
    try:
        compiled = re2.compile(pattern, _options())
    except re2.error as exc:
        reason = _rejection(pattern, exc)
        raise InvalidValueError(
            f"pattern {_short(pattern)} is not a valid RE2 regular expression: {reason}",
            reason=reason,
        ) from None
    except UnicodeEncodeError as exc:
        raise _not_unicode("pattern", exc) from None
    return Regex(pattern, compiled)


def _short(text: str, limit: int = 80) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def compile_regex(pattern: str, max_length: int | None = DEFAULT_MAX_PATTERN_LENGTH) -> Regex:
    """Compile a user regular expression with RE2 (cached).

    Raises ``InvalidValueError`` for a pattern longer than ``max_length`` (None: a pattern
    already checked, such as a stored constraint) or one RE2 does not support
    (backreferences, lookaround, ``\\Z``: RE2 spells it ``\\z``).

    >>> compile_regex("(a+)+$").search("a" * 30 + "!")     # no catastrophic backtracking
    False
    >>> try:
    ...     compile_regex(r"(a)\\1")
    ... except ValueError as exc:
    ...     print(str(exc).split(": ", 1)[1])
    invalid escape sequence: \\1 (backreferences are not supported)
    """
    return _compile(_check_length("pattern", pattern, max_length))


# ------------------------------------------------------------------------- globs


def _literal(char: str) -> str:
    if char.isascii() and (char.isalnum() or char == "_"):
        return char
    return f"\\x{{{ord(char):x}}}"


def _class_items(stuff: str) -> tuple[bool, list[tuple[str, str]]]:
    # ``stuff`` is the class as fnmatch.translate writes it for ``re``: a leading ``^``
    # negates, ``\\x`` is a literal x, ``a-b`` is a range. Parse it the way ``re`` does.
    negate = stuff.startswith("^")
    pos = 1 if negate else 0
    items: list[tuple[str, str]] = []

    def take() -> str:
        nonlocal pos
        char = stuff[pos]
        pos += 1
        if char == "\\":
            char = stuff[pos]
            pos += 1
        return char

    while pos < len(stuff):
        low = take()
        if pos + 1 < len(stuff) and stuff[pos] == "-":
            pos += 1
            items.append((low, take()))
        else:
            items.append((low, low))
    return negate, items


def _glob_class(pat: str, i: int, j: int) -> str:
    # The body of fnmatch.translate for ``[...]`` (CPython 3.11-3.13), so the set is
    # exactly the one fnmatch means, then re-emitted with every character escaped (RE2
    # would read ``[:alpha:]`` inside a class as a POSIX class; ``re`` does not).
    stuff = pat[i:j]
    if "-" not in stuff:
        stuff = stuff.replace("\\", r"\\")
    else:
        chunks = []
        k = i + 2 if pat[i] == "!" else i + 1
        while True:
            k = pat.find("-", k, j)
            if k < 0:
                break
            chunks.append(pat[i:k])
            i = k + 1
            k = k + 3
        chunk = pat[i:j]
        if chunk:
            chunks.append(chunk)
        else:
            chunks[-1] += "-"
        for k in range(len(chunks) - 1, 0, -1):  # remove empty ranges
            if chunks[k - 1][-1] > chunks[k][0]:
                chunks[k - 1] = chunks[k - 1][:-1] + chunks[k][1:]
                del chunks[k]
        stuff = "-".join(s.replace("\\", r"\\").replace("-", r"\-") for s in chunks)
    if not stuff:
        return r"[^\x00-\x{10ffff}]"  # an empty set: never matches
    if stuff == "!":
        return "."  # a negated empty set: any character
    if stuff[0] == "!":
        stuff = "^" + stuff[1:]
    elif stuff[0] in ("^", "["):
        stuff = "\\" + stuff
    negate, items = _class_items(stuff)
    body = "".join(
        _literal(low) if low == high else f"{_literal(low)}-{_literal(high)}"
        for low, high in items
    )
    return f"[{'^' if negate else ''}{body}]"


def glob_to_regex(pattern: str) -> str:
    """The RE2 regex (to be full-matched) for an fnmatch glob.

    >>> glob_to_regex("model.*")
    '(?s:model\\\\x{2e}.*)'
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            if not out or out[-1] != ".*":
                out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(_literal("["))
            else:
                out.append(_glob_class(pattern, i, j))
                i = j + 1
        else:
            out.append(_literal(char))
    return f"(?s:{''.join(out)})"


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compile_glob(pattern: str) -> Callable[[str], bool]:
    try:
        regex = _compile(glob_to_regex(pattern))
    except InvalidValueError as exc:  # not expected: every glob translates to valid RE2
        raise InvalidValueError(f"glob {_short(pattern)} cannot be used: {exc}") from None
    return regex.fullmatch


def compile_glob(
    pattern: str, max_length: int | None = DEFAULT_MAX_PATTERN_LENGTH
) -> Callable[[str], bool]:
    """A predicate: does a name match the fnmatch glob (case-sensitive, whole name)?

    Same answers as ``fnmatch.fnmatchcase(name, pattern)``, in linear time.

    >>> match = compile_glob("model.*")
    >>> match("model.temperature"), match("other")
    (True, False)
    >>> compile_glob("*a*a*a*a*a*a*a*a*b")("a" * 100_000)     # instant
    False
    """
    return _compile_glob(_check_length("glob pattern", pattern, max_length))


# ------------------------------------------------------------------ name filters


def glob_as_search(pattern: str, max_length: int | None = DEFAULT_MAX_PATTERN_LENGTH) -> str:
    """The name-filter regex (searched, see ``compile_name_filter``) equivalent to an
    fnmatch glob: the glob's translation, anchored at both ends of the name.

    >>> compile_name_filter(glob_as_search("model.*"))("model.t")
    True
    >>> compile_name_filter(glob_as_search("model.*"))("my_model.t")
    False
    """
    return rf"\A(?:{glob_to_regex(_check_length('glob pattern', pattern, max_length))})\z"


def compile_name_filter(
    pattern: str, max_length: int | None = DEFAULT_MAX_PATTERN_LENGTH
) -> Callable[[str], bool]:
    """A predicate for the API's name filters (``list_variables``, ``export_variables``'
    ``filter_pattern``, ``VariableCache.invalidate_pattern``): does the RE2 regex match
    somewhere in the name, as ``re.search`` would?

    Search, not full match, because that is what a spec user's patterns need: the
    spec's own examples spell their anchors (``^model.*$``) and their wildcards
    (``.*model.*``) and mean the same under both, while a ported ``re.search(p, name)``
    filter means only search. Anchor with ``^...$`` for the whole name.

    >>> match = compile_name_filter("model")
    >>> match("my_model.t"), match("temperature")
    (True, False)
    >>> compile_name_filter("^model.*$")("model.t")
    True
    """
    return compile_regex(pattern, max_length).search


def name_pattern(what: str, pattern: str | None, glob: bool = False) -> str:
    """A name filter as the wire carries it: the regex itself, or a glob translated by
    ``glob_as_search`` when ``glob`` is true; ``""`` for no filter. Checked here, so a bad
    pattern fails before any call with ``ValueError`` naming ``what``, the pattern and RE2's
    reason.

    >>> match = compile_name_filter(name_pattern("filter_pattern", "model.*", glob=True))
    >>> match("model.t"), match("my_model.t")
    (True, False)
    >>> try:
    ...     name_pattern("filter_pattern", "(a")
    ... except ValueError as exc:
    ...     print(exc)
    filter_pattern '(a' is not a valid RE2 regular expression: missing ): (a
    """
    if pattern is None:
        return ""
    if not isinstance(pattern, str):
        raise InvalidValueError(f"{what} must be a string, got {type(pattern).__name__}")
    regex = glob_as_search(pattern) if glob else pattern
    try:
        compile_regex(regex)
    except InvalidValueError as exc:
        message = exc.message.removeprefix("pattern ")
        raise InvalidValueError(f"{what} {message}", **exc.details) from None
    return regex
