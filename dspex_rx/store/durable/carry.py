"""Watchers carried over when a durable backend's live sessions are replaced by the stored
ones (a catch-up with another writer, a conflict undone): which commits they hear, and
when their streams must end instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from dspex_rx.store.memory.backend import _tell
from dspex_rx.store.state import Session


def carry_watchers(before: Mapping[str, Session], after: Mapping[str, Session],
                   undone_above: int | None = None) -> bool:
    """Move each session's watchers from its object in ``before`` to the one in ``after``
    and tell them the commits they had not heard, in order (None if the session went,
    or ended and came back as another incarnation of its id); True if some stream must
    end instead and resume: commits its watchers missed are gone from the log, or,
    after a conflict (``undone_above``: the watchers already forgot the commits above
    it), a session's creation or closing was undone.

    >>> carry_watchers({}, {})
    False
    """
    ends = [sid for sid, old in before.items()
            if _carry(old, after.get(sid), undone_above)]
    # A session back after a conflict: its closing was undone, and its watchers (told
    # it went, and dropped) cannot follow that.
    return bool(ends) or (undone_above is not None and bool(set(after) - set(before)))


def _carry(old: Session, new: Session | None, undone_above: int | None) -> bool:
    # The same list object, so a watcher's remover (bound to the old session) still works.
    told = old.revision if undone_above is None else min(old.revision, undone_above)
    if new is not None and new.incarnation != old.incarnation:
        # The id's session ended and another was created under it: its watchers hear
        # the one they watched went, as replicas applying the rows one by one tell them.
        new = None
    if new is None:
        if undone_above is not None:
            return bool(old.listeners)
        _tell(old, None)
        return False
    new.listeners = old.listeners
    new.foreign_listeners = old.foreign_listeners
    if new.revision > told and new.log_floor > told and old.listeners:
        return True
    for commit in new.log:
        if commit.revision > told:
            _tell(new, commit)
    return False
