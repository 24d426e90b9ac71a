"""The actors of one connection by variable id and by name: made on first use, bound to ids
as the server names them, and provisional ones (made for a ref) adopted or folded in.
"""

from __future__ import annotations

from dspex_rx.client.variable_actor import ActorHub, VariableActor


class ActorDirectory:
    """The connection's actors, by id (every one keyed by its own id) and by name or ref.

    Example: ``directory.actor("temperature")`` is the actor the hub routes its events to.
    """

    def __init__(self, hub: ActorHub) -> None:
        self.hub = hub
        self.by_id: dict[str, VariableActor] = {}
        self.by_name: dict[str, VariableActor] = {}

    def all(self) -> list[VariableActor]:
        """Every actor once, by id or by name.

        Example: ``directory.all()`` is what the hub ends when the session closes.
        """
        return list({id(a): a for a in [*self.by_id.values(), *self.by_name.values()]}.values())

    def actor(self, ref: str) -> VariableActor:
        """The actor for a variable name or id, created on first use.

        Example: ``directory.actor("temperature")`` creates the actor on first use.
        """
        actor = self.by_id.get(ref) or self.by_name.get(ref)
        if actor is None:
            actor = VariableActor(self.hub, ref, ref)
            self.by_name[ref] = actor
        return actor

    def known(self, ref: str) -> VariableActor | None:
        """The actor for a ref if there is one (no creation).

        Example: ``directory.known("temperature")`` is ``None`` until something asked for it.
        """
        return self.by_id.get(ref) or self.by_name.get(ref)

    def learn(self, var_id: str, name: str) -> VariableActor:
        """Bind an id and a name to one actor (from any server answer). Provisional actors
        made for a ref before its id was known are adopted or folded in.

        Example: ``directory.learn("var_temperature_1", "temperature")`` binds both to one actor.
        """
        actor = self.by_id.get(var_id)
        provisional = []
        for ref in (var_id, name):
            candidate = self.by_name.get(ref)
            if (
                candidate is not None
                and candidate is not actor
                and self.by_id.get(candidate.id) is not candidate
                and candidate not in provisional
            ):
                provisional.append(candidate)
        if actor is None:
            if provisional:
                actor = provisional.pop(0)
                self.hub.cache.rekey(actor.id, var_id)
                actor.id = var_id
            else:
                actor = VariableActor(self.hub, var_id, name)
            self.by_id[var_id] = actor
        for other in provisional:
            self.fold(other, actor)
        if var_id != name and self.by_name.get(var_id) is not None:
            del self.by_name[var_id]  # a provisional key that was really an id
        actor.name = name
        self.by_name[name] = actor
        return actor

    def fold(self, source: VariableActor, target: VariableActor) -> None:
        """Move ``source``'s observers to ``target`` (the same variable known two ways).

        Example: ``directory.fold(provisional, actor)`` moves the provisional actor's observers.
        """
        moved, source.attached = source.attached, []
        if source.wire:
            source._unwire()
        if not moved:
            return
        for attached in moved:
            attached.baseline = False
            attached.actor = target
            target.attached.append(attached)
        if not target.wire or target.live:
            target.wire = True
            target.live = False
            self.hub.request_subscribe(target, target.id)

    def forget(self, actor: VariableActor) -> None:
        """Drop a deleted variable's actor.

        Example: ``directory.forget(actor)`` drops a deleted variable's actor from both maps.
        """
        if self.by_id.get(actor.id) is actor:
            del self.by_id[actor.id]
        if self.by_name.get(actor.name) is actor:
            del self.by_name[actor.name]
