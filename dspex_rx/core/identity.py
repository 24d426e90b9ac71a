"""Who a session id belongs to: namespaces the server reserves for principals holding a
key, ids retired (with their token's digest) when their session ends, and so which
``session_pattern`` an access rule may name without granting strangers. No gRPC here.

Why: an access rule names sessions by id, and clients choose their ids. A rule is only as
good as the guarantee that the id it names is the party the owner meant, so

- an id is *claimed* by the session that first creates it; when that session ends the id
  is *retired* with a digest of its token, and creating it again needs that token (the
  new session keeps it), so nobody else can become ``bob`` after bob leaves;
- a *namespace* (an exact id, or ``prefix*``) may be reserved for a principal: creating a
  session whose id falls in it needs the principal's key;
- a rule may name ``'any'``, an exact id that is reserved or claimed (live or retired),
  or a glob whose every match lies in a reserved namespace. Anything else would grant
  whoever picks a matching id first, and is refused;
- a claim has a random number, and a rule naming an exact unreserved id is bound to it
  (exports carry it), so once an id is forgotten and claimed by someone else, an old
  rule restored from a file is refused rather than granting them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dspex_rx.errors import AuthenticationError, InvalidValueError

GLOB_CHARS = "*?["
MIN_KEY_LENGTH = 16
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
# Ids are NAME_RE of the store (letters, digits, _ . - /); a namespace adds one final '*'.
_NAMESPACE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]{0,255}\*?|\*")


def literal_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard (all of it for an exact id).

    >>> literal_prefix("admin_ops_*"), literal_prefix("bob")
    ('admin_ops_', 'bob')
    """
    cut = min((i for i in (pattern.find(c) for c in GLOB_CHARS) if i >= 0), default=-1)
    return pattern if cut < 0 else pattern[:cut]


def is_glob(pattern: str) -> bool:
    """Whether a session pattern has a wildcard (``*``, ``?`` or ``[``).

    >>> is_glob("admin_*"), is_glob("bob")
    (True, False)
    """
    return any(c in pattern for c in GLOB_CHARS)


def digest(secret: str) -> bytes:
    """The SHA-256 digest a key or token is kept as once its session is gone.

    >>> len(digest("a-long-enough-secret"))
    32
    """
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class Namespace:
    """Session ids reserved for one principal: an exact id, or every id starting with a
    prefix (``'admin_*'``); ``key_digest`` is the SHA-256 of the principal's key.

    >>> ns = Namespace("admin_*", digest("correct horse battery staple"))
    >>> ns.holds_id("admin_7"), ns.holds_id("bob"), ns.holds_pattern("admin_ops_*")
    (True, False, True)
    """

    pattern: str
    key_digest: bytes

    @property
    def prefix(self) -> str:
        """The literal part of the pattern (the whole id when it is exact).

        >>> Namespace("ci", b"").prefix
        'ci'
        """
        return self.pattern.rstrip("*")

    @property
    def exact(self) -> bool:
        """Whether the namespace is one id rather than a prefix.

        >>> Namespace("ci", b"").exact, Namespace("ci_*", b"").exact
        (True, False)
        """
        return not self.pattern.endswith("*")

    def holds_id(self, session_id: str) -> bool:
        """Whether the id lies in this namespace.

        >>> Namespace("ci", b"").holds_id("ci_2")
        False
        """
        if self.exact:
            return session_id == self.pattern
        return session_id.startswith(self.prefix)

    def holds_pattern(self, pattern: str) -> bool:
        """Whether every id the session pattern can match lies in this namespace.

        >>> Namespace("admin_*", b"").holds_pattern("adm*")
        False
        """
        if self.exact:
            return pattern == self.pattern
        # Every match of a glob starts with its literal prefix, so a literal prefix that
        # starts with the namespace's prefix keeps every match inside it.
        return literal_prefix(pattern).startswith(self.prefix)

    def key_matches(self, key: str) -> bool:
        """Whether ``key`` is the principal's key (constant time in where it differs).

        >>> Namespace("ci", digest("k" * 16)).key_matches("k" * 16)
        True
        """
        return bool(key) and hmac.compare_digest(digest(key), self.key_digest)


def _key_digest(pattern: str, key: Any) -> bytes:
    if not isinstance(key, str):
        raise InvalidValueError(
            f"principal {pattern!r}: the key must be a string, got {type(key).__name__} "
            "(in YAML, quote a key made of digits)"
        )
    found = _DIGEST.fullmatch(key)
    if found:
        return bytes.fromhex(found.group(1))
    if key.startswith("sha256:"):
        raise InvalidValueError(
            f"principal {pattern!r}: a 'sha256:' key must be 64 lower-case hex digits"
        )
    if len(key) < MIN_KEY_LENGTH:
        raise InvalidValueError(
            f"principal {pattern!r}: the key must be at least {MIN_KEY_LENGTH} characters "
            f"(or 'sha256:' and the hex digest of one), got {len(key)}"
        )
    return digest(key)


class Principals:
    """The server's reserved namespaces: ``{pattern: key}`` where a pattern is an exact id
    or ``prefix*`` and a key is the secret (16+ characters) or ``'sha256:<hex digest>'``
    of it. The most specific namespace holding an id owns it (exact, then longest prefix).

    >>> principals = Principals({"admin_*": "s3cret-admin-key-0001"})
    >>> principals.owner("admin_7").pattern, principals.owner("bob")
    ('admin_*', None)
    >>> principals.covers("admin_*"), principals.covers("a*")
    (True, False)
    """

    def __init__(self, namespaces: Mapping[str, str] | None = None) -> None:
        if namespaces is None:
            namespaces = {}
        if not isinstance(namespaces, Mapping):
            raise InvalidValueError(
                "principals must be a mapping of namespace pattern to key, got "
                f"{type(namespaces).__name__}"
            )
        found = []
        for pattern, key in namespaces.items():
            if not isinstance(pattern, str) or not _NAMESPACE.fullmatch(pattern) or (
                pattern == "*"
            ):
                raise InvalidValueError(
                    f"principal namespace {pattern!r} must be a session id, or a non-empty "
                    "id prefix followed by one '*' (like 'admin_*')"
                )
            found.append(Namespace(pattern, _key_digest(pattern, key)))
        # Most specific first: exact ids, then longer prefixes.
        self.namespaces = tuple(
            sorted(found, key=lambda ns: (not ns.exact, -len(ns.prefix)))
        )

    def __bool__(self) -> bool:
        return bool(self.namespaces)

    def __repr__(self) -> str:
        return f"Principals({[ns.pattern for ns in self.namespaces]!r})"

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Principals:
        """Read ``{pattern: key}`` from a YAML or JSON file (keys may be ``sha256:`` digests,
        so the file need not hold a secret).

        Example: ``Principals.from_file("principals.yaml")`` with lines like
        ``admin_*: "sha256:<hex digest of the key>"``.
        """
        import yaml

        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidValueError(
                f"cannot read principals from {os.fspath(path)!r}: {exc}"
            ) from None
        return cls(data or {})

    def owner(self, session_id: str) -> Namespace | None:
        """The namespace that owns the id, or None when anyone may claim it.

        >>> Principals({"ci": "k" * 16, "c*": "j" * 16}).owner("ci").pattern
        'ci'
        """
        for namespace in self.namespaces:
            if namespace.holds_id(session_id):
                return namespace
        return None

    def covers(self, pattern: str) -> bool:
        """Whether every id the session pattern can match is reserved.

        >>> Principals({"ci_*": "k" * 16}).covers("ci_[0-9]")
        True
        """
        return any(namespace.holds_pattern(pattern) for namespace in self.namespaces)

    def check_key(self, session_id: str, key: str) -> None:
        """``AuthenticationError`` unless ``key`` opens the namespace owning ``session_id``
        (nothing to check for an id no namespace owns).

        >>> Principals({"ci": "k" * 16}).check_key("ci", "k" * 16)
        """
        namespace = self.owner(session_id)
        if namespace is None or namespace.key_matches(key):
            return
        said = "no principal key was presented" if not key else "the principal key is wrong"
        raise AuthenticationError(
            f"session id {session_id!r} is in the namespace {namespace.pattern!r}, reserved "
            f"on this server for a principal; creating it needs that principal's key, and "
            f"{said}"
        )


class RetiredIds:
    """Ids of ended sessions, each with its token's digest, oldest first. ``trim`` keeps the
    count near ``cap`` by forgetting the oldest ids no access rule names: a forgotten id
    grants nothing, and a rule may not name it again until somebody claims it anew.

    >>> retired = RetiredIds(cap=2)
    >>> retired.retire("bob", "bob-token-000000000", claim=7)
    >>> retired.claims("bob"), retired.token_matches("bob", "bob-token-000000000")
    (True, True)
    >>> retired.claim_of("bob"), retired.claim_of("carol")
    (7, 0)
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._digests: dict[str, tuple[bytes, int]] = {}
        # Characters of every id kept, so the store's memory account can charge them
        # (accounts.retired_cost) without a walk.
        self.id_chars = 0
        # When to trim next: the cap, or (if rules name more ids than it) a tenth of the
        # cap above what the last trim had to keep, so each scan of the rules is paid for
        # by that many session ends rather than run on every one.
        self._trim_at = cap

    def __len__(self) -> int:
        return len(self._digests)

    def claims(self, session_id: str) -> bool:
        """Whether an ended session claimed the id.

        >>> RetiredIds(1).claims("bob")
        False
        """
        return session_id in self._digests

    def token_matches(self, session_id: str, token: str) -> bool:
        """Whether ``token`` was the token of the session that retired the id.

        >>> RetiredIds(1).token_matches("bob", "x")
        False
        """
        kept = self._digests.get(session_id)
        return kept is not None and bool(token) and hmac.compare_digest(
            digest(token), kept[0]
        )

    def claim_of(self, session_id: str) -> int:
        """The claim number the id was retired with (0 when it is not retired).

        >>> RetiredIds(1).claim_of("bob")
        0
        """
        kept = self._digests.get(session_id)
        return kept[1] if kept is not None else 0

    def retire(self, session_id: str, token: str, claim: int = 0) -> None:
        """Keep the id claimed by ``token`` (claim number ``claim``) now that its session
        has ended.

        >>> retired = RetiredIds(10)
        >>> retired.retire("bob", "bob-token", claim=2)
        >>> retired.token_matches("bob", "bob-token"), retired.claim_of("bob")
        (True, 2)
        """

        self.revive(session_id)  # re-insert: newest last
        self._digests[session_id] = (digest(token), claim)
        self.id_chars += len(session_id)

    def items(self) -> list[tuple[str, tuple[bytes, int]]]:
        """The retired ids, oldest first, with their token digest and claim (what a
        durable store keeps; the token itself is never kept).

        >>> retired = RetiredIds(10); retired.retire("bob", "bob-token", claim=2)
        >>> [(sid, claim) for sid, (_, claim) in retired.items()]
        [('bob', 2)]
        """
        return list(self._digests.items())

    def restore(self, items: Iterable[tuple[str, tuple[bytes, int]]]) -> None:
        """Replace the retired ids by stored ``items()`` (oldest first).

        >>> retired, again = RetiredIds(10), RetiredIds(10)
        >>> retired.retire("bob", "bob-token", claim=2); again.restore(retired.items())
        >>> again.token_matches("bob", "bob-token"), again.claim_of("bob")
        (True, 2)
        """
        self._digests = {sid: (bytes(kept[0]), int(kept[1])) for sid, kept in items}
        self.id_chars = sum(map(len, self._digests))

    def revive(self, session_id: str) -> None:
        """The id is live again (its claimant came back); it is no longer retired.

        >>> RetiredIds(1).revive("bob")
        """
        if self._digests.pop(session_id, None) is not None:
            self.id_chars -= len(session_id)

    def trim(self, named: Callable[[], set[str]]) -> int:
        """Over ``cap``, forget the oldest ids not in ``named()`` until a tenth below it;
        returns how many were forgotten. ``named`` is called only when over the cap (and,
        when named ids alone exceed it, only after another tenth of the cap has retired).

        >>> retired = RetiredIds(cap=1)
        >>> for sid in ("a", "b", "c"): retired.retire(sid, sid * 20)
        >>> retired.trim(lambda: {"a"}), retired.claims("a"), retired.claims("b")
        (2, True, False)
        """
        if len(self._digests) <= self._trim_at:
            return 0
        keep = named()
        goal = self.cap - self.cap // 10
        gone = 0
        for session_id in list(self._digests):
            if len(self._digests) <= goal:
                break
            if session_id not in keep:
                self.revive(session_id)
                gone += 1
        self._trim_at = max(self.cap, len(self._digests) + max(1, self.cap // 10))
        return gone
