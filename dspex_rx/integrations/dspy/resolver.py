"""The module resolver: DSPy modules whose class is the value of a ``module`` variable
(``ModuleVariableResolver.create_module`` makes a ``VariableModule``).
"""

from __future__ import annotations

import importlib
import inspect
import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dspy

from dspex_rx.client.aio import portal_aware
from dspex_rx.errors import InvalidValueError, VariableNotFoundError
from dspex_rx.integrations.dspy.helpers import _ABSENT, _check_type, run_in_thread
from dspex_rx.logs import get_logger

if TYPE_CHECKING:
    from reactivex import abc as rx_abc

    from dspex_rx.client import SessionContext
    from dspex_rx.client.actors import VariableUpdate

log = get_logger("dspex_rx.dspy")

__all__ = [
    "BUILTIN_MODULES",
    "ModuleVariableResolver",
    "VariableModule",
]


BUILTIN_MODULES = ("Predict", "ChainOfThought", "ReAct", "ProgramOfThought")


@portal_aware
class VariableModule:
    """A DSPy module whose class is the current value of a ``module`` variable. Made by
    ``ModuleVariableResolver.create_module``.

    ``await forward(**inputs)`` reads the variable (a local read: it is watched, so the
    pushed value, and this connection's own writes at once), builds the class's instance
    the first time (one instance per class, kept, so demos and bound settings stay with
    it, until ``register_module`` replaces that class) and runs it in a worker thread.
    ``last_class`` names the class of the last call.

    Example: ``await qa.forward(question="Why is the sky blue?")`` runs the class the
    variable holds now, and ``qa.last_class`` names it.
    """

    def __init__(
        self,
        resolver: ModuleVariableResolver,
        variable: str,
        signature: Any,
        kwargs: Mapping[str, Any],
        config: Mapping[str, Any],
    ) -> None:
        self.resolver = resolver
        self.variable = variable
        self.signature = signature
        self.kwargs = dict(kwargs)
        self.config = dict(config)
        self.instances: dict[str, Any] = {}
        self.last_class: str | None = None
        self.closed: str | None = None  # why the watch ended, once it has
        self.disposable: rx_abc.DisposableBase | None = None

    async def current_class(self) -> str:
        """The class name the variable holds now.

        Example: ``await qa.current_class()`` is ``"ChainOfThought"`` while the variable
        holds it.
        """
        if self.closed is not None:
            raise RuntimeError(f"module variable {self.variable!r}: {self.closed}")
        return str(await self.resolver.session.get_variable(self.variable))

    async def module(self) -> Any:
        """The DSPy module instance for the variable's current class.

        Example: ``await bridge.sync_dspy_parameters(await qa.module())`` binds its settings.
        """
        return self.instance(await self.current_class())

    def instance(self, class_name: str) -> Any:
        """The (kept) instance of ``class_name``, built on first use. Building checks
        what the class needs first: its required arguments (ReAct's ``tools``) and, for a
        class that runs generated code (ProgramOfThought), an interpreter; without them
        it raises ``ValueError`` naming the variable, the class and what is missing.

        Example: ``qa.instance("Predict")`` is the same ``dspy.Predict`` on every call.
        """
        name = _canonical(class_name)
        if name not in self.instances:
            cls = self.resolver.resolve(name)
            _check_arguments(self.variable, name, cls, self.kwargs)
            _check_interpreter(self.variable, name, cls, self.kwargs)
            module = cls(self.signature, **_accepted(cls, self.kwargs))
            if self.config:
                for _, predictor in module.named_predictors():
                    predictor.update_config(**self.config)
            self.instances[name] = module
            log.debug("dspy_module_built", variable=self.variable, module=name)
        return self.instances[name]

    async def forward(self, **inputs: Any) -> Any:
        """Run the current class's module on ``inputs`` (in a worker thread); returns its
        ``dspy.Prediction``.

        Example: ``(await qa.forward(question="What is 2 + 2?")).answer``.
        """
        name = _canonical(await self.current_class())
        module = self.instance(name)
        self.last_class = name
        return await run_in_thread(module, **inputs)

    __call__ = forward

    def _end(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason

    def _on_update(self, update: VariableUpdate) -> None:
        if update.update_type == "deleted":
            self._end("the variable was deleted")

    def close(self) -> None:
        """Stop watching the variable; ``forward`` then raises ``RuntimeError``.

        Example: after ``qa.close()``, ``await qa.forward(...)`` raises ``RuntimeError``.
        """
        self._end("closed")
        if self.disposable is not None:
            self.disposable.dispose()


def _canonical(name: str) -> str:
    return name[len("dspy."):] if name.startswith("dspy.") else name


def _init_parameters(cls: type[Any]) -> dict[str, inspect.Parameter]:
    # The constructor's own keywords after (self, signature). inspect.signature(cls) would
    # show DSPy's metaclass (*args, **kwargs) instead.
    return {
        name: p for name, p in list(inspect.signature(cls.__init__).parameters.items())[2:]
        if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }


def _check_arguments(variable: str, name: str, cls: type[Any], kwargs: Mapping[str, Any]) -> None:
    missing = [p for p, spec in _init_parameters(cls).items()
               if spec.default is inspect.Parameter.empty and p not in kwargs]
    if missing:
        needs = ", ".join(f"{p}=" for p in missing)
        raise InvalidValueError(
            f"module variable {variable!r} chose {name}, and {name} cannot be created "
            f"without {needs}: pass {needs}... to create_module({variable!r}, ...)"
        )


def _deno_found() -> bool:
    # Where DSPy's PythonInterpreter looks: the `deno` package's binary, else the PATH.
    try:
        find_deno_bin = importlib.import_module("deno").find_deno_bin
        return bool(find_deno_bin())
    except (ImportError, AttributeError, FileNotFoundError):
        return shutil.which("deno") is not None


def _check_interpreter(
    variable: str, name: str, cls: type[Any], kwargs: Mapping[str, Any]
) -> None:
    """A class that runs generated code (ProgramOfThought takes ``interpreter_factory``)
    gets an interpreter it can start: one passed to create_module, one configured in
    DSPy (``dspy.configure`` / ``dspy.context(interpreter_factory=...)``), or DSPy's
    default, which needs Deno. Without any, DSPy would fail only inside the first call,
    after a request to the LM."""
    if "interpreter_factory" not in _init_parameters(cls):
        return
    given = kwargs.get("interpreter_factory")
    if given is not None and given is not dspy.PythonInterpreter:
        return
    if dspy.settings.get("interpreter_factory") is not None or _deno_found():
        return
    raise InvalidValueError(
        f"module variable {variable!r} chose {name}, which runs the code it generates in "
        "DSPy's PythonInterpreter, and that needs Deno, which is not installed "
        "(pip install 'dspy[deno]'); or pass interpreter_factory=dspy.LocalInterpreter to "
        f"create_module({variable!r}, ...) (a local subprocess with your rights, not a "
        "sandbox)"
    )


def _accepted(cls: type[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    # Predict and ChainOfThought take **config as LM settings: a ReAct-only keyword such as
    # tools= must not reach them, or it would be sent with every request.
    names = _init_parameters(cls)
    return {key: value for key, value in kwargs.items() if key in names}


@portal_aware
class ModuleVariableResolver:
    """Makes DSPy modules whose class is chosen by a ``module`` variable: ``Predict``,
    ``ChainOfThought``, ``ReAct`` (needs ``tools=``), ``ProgramOfThought`` (deprecated in
    DSPy 3.4; needs Deno, or ``interpreter_factory=dspy.LocalInterpreter``, which runs the
    generated code in a local subprocess with your user's rights: not a sandbox), and
    classes added with ``register_module``. What a class needs is asked for only when it
    is created: a variable may offer ReAct to a program that never passes ``tools=``.

    Example: after ``await session.register_variable("strategy", "module", "Predict",
    constraints={"choices": ["Predict", "ChainOfThought"]})``,
    ``await ModuleVariableResolver(session).create_module("strategy", "question -> answer")``
    makes a module that a Predict runs until the variable says otherwise.
    """

    def __init__(self, session: SessionContext) -> None:
        self.session = session
        self.modules: dict[str, type[Any]] = {
            name: getattr(dspy, name) for name in BUILTIN_MODULES
        }
        self.created: list[VariableModule] = []

    def register_module(self, name: str, module_class: type[Any]) -> None:
        """Make a ``dspy.Module`` subclass choosable by ``name``; its constructor takes the
        signature first. Registering a name again replaces its class: modules made here
        drop their instance of the old class and build the new one on their next call.

        Example: ``resolver.register_module("MajorityVote", MajorityVote)``, where
        ``MajorityVote`` subclasses ``dspy.Module``.
        """
        if not (isinstance(module_class, type) and issubclass(module_class, dspy.Module)):
            raise InvalidValueError(f"module {name!r}: {module_class!r} is not a dspy.Module "
                                    "subclass")
        if name in BUILTIN_MODULES:
            raise InvalidValueError(f"module {name!r} is built in and cannot be replaced")
        replaced = self.modules.get(name)
        self.modules[name] = module_class
        if replaced is not None and replaced is not module_class:
            for module in self.created:
                module.instances.pop(name, None)

    def resolve(self, name: str) -> type[Any]:
        """The class for a module name (``'ChainOfThought'`` or ``'dspy.ChainOfThought'``).

        Example: ``resolver.resolve("dspy.ChainOfThought") is dspy.ChainOfThought`` holds.
        """
        found = self.modules.get(_canonical(name))
        if found is None:
            raise InvalidValueError(
                f"module {name!r} is not known here (known: {', '.join(sorted(self.modules))});"
                " register it with ModuleVariableResolver.register_module"
            )
        return found

    async def create_module(
        self,
        variable: str,
        signature: Any,
        *,
        config: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> VariableModule:
        """A ``VariableModule`` following ``variable`` (a ``module`` variable that exists).

        ``kwargs`` go to each class whose constructor names them (``tools=`` and
        ``max_iters=`` to ReAct, ``interpreter_factory=`` to ProgramOfThought); ``config``
        (LM settings such as ``temperature``) goes to every predictor of every class.
        Checked here, before any call: the variable exists (else
        ``VariableNotFoundError``) and has type ``module``; every listed choice (or,
        without ``choices``, the class it holds now) is a known class; every keyword
        goes to some possible class; the class the variable holds now gets its required
        arguments. Another class is checked when it is first created, which is when the
        variable first chooses it: a variable may offer ``ReAct`` while
        ``create_module`` gets no ``tools=``, and only a call made while it holds
        ``ReAct`` fails (``ValueError`` naming the variable, ReAct and ``tools=``).

        Example: ``await resolver.create_module("strategy", "question -> answer",
        tools=[search], config={"temperature": 0.3})``.
        """

        found = await self.session.get_variables(
            [variable], defaults={variable: _ABSENT}, include_metadata=True
        )
        if found[variable] is _ABSENT:
            raise VariableNotFoundError(f"no module variable {variable!r}: register it first "
                                        "(type 'module', choices=[...])")
        metadata = found[variable]  # system fields: type, constraints
        _check_type(variable, metadata, "module", "ModuleVariableResolver")
        choices = (metadata.get("constraints") or {}).get("choices")
        current = _canonical(str(found[variable]["value"]))
        # Listed choices must all be known classes now (a typo is found before any call).
        # Only the current class is built next, so only its arguments must be here now:
        # the spec offers ReAct beside Predict to a program that has no tools for it.
        listed = list(choices) if choices else [current]
        classes = {_canonical(name): self.resolve(name) for name in listed}
        _check_arguments(variable, current, self.resolve(current), kwargs)
        possible = classes if choices else {**self.modules, **classes}
        accepted = {p for cls in possible.values() for p in _init_parameters(cls)}
        unused = sorted(set(kwargs) - accepted)
        if unused:
            raise InvalidValueError(
                f"module variable {variable!r}: no choice ({', '.join(possible)}) takes "
                f"{', '.join(unused)}; LM settings go in config={{...}}"
            )
        module = VariableModule(self, variable, signature, kwargs, config or {})
        # The watch keeps the variable's cache entry pushed (forward reads it locally) and
        # tells the module when the session closes or the variable goes.
        module.disposable = self.session.observe(variable).subscribe(
            on_next=module._on_update,
            on_error=lambda exc: module._end(f"its watch failed: {exc}"),
            on_completed=lambda: module._end("the session is closed"),
        )
        await self.session.sync()
        self.created.append(module)
        return module
