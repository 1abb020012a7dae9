"""Fast construction of the domain's frozen dataclasses, for the decider's hot path.

A frozen dataclass's ``__init__`` must get past its own ``__setattr__`` (which
refuses every assignment), so it sets each field with ``object.__setattr__``:
a generic call of 150-300 ns a field on the dev machine. Folding one event
builds the event, a ``RunState`` (19 fields) and a ``StepState`` (12 fields),
so that guard alone was most of the decider's time.

:func:`constructor` builds the same object another way: it fills an instance of
a *draft* class — a subclass that adds no slot, with the plain
``object.__setattr__`` — with ordinary attribute stores, then makes it an
instance of the frozen class by assigning ``__class__`` (which CPython allows
between classes of the same layout). The result is indistinguishable from
``cls(...)``: same type, same slots, frozen from then on. Only classes without
``__post_init__`` and without default factories qualify; :func:`constructor`
checks that, and that it builds what ``cls(...)`` builds, when it is created.
:func:`building` gives the same statements to a caller that generates a
function building one inline (the decider's emitters).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def constructor(cls: type[T]) -> Callable[..., T]:
    """``cls``'s fields by position (or name), in declaration order; ~5x faster than ``cls``."""
    params = _fields(cls)
    names = [p.name for p in params]
    # Defaults of the trailing fields that have one (a positional signature
    # cannot give a default to a field followed by one without).
    defaults: list[Any] = []
    for p in reversed(params):
        if p.default is dataclasses.MISSING:
            break
        defaults.insert(0, p.default)
    statements, namespace = building(cls, "obj", names)
    source = f"def make({', '.join(names)}):\n{statements}    return obj\n"
    exec(source, namespace)  # as dataclasses builds __init__: no per-field loop at run time
    make: Callable[..., T] = namespace["make"]
    make.__defaults__ = tuple(defaults)
    make.__qualname__ = make.__name__ = f"make_{cls.__name__}"
    sample = dict(zip(names, range(len(names)), strict=True))
    built = make(**sample)
    if type(built) is not cls or built != cls(**sample):
        raise TypeError(f"the fast constructor of {cls.__name__} does not build a {cls.__name__}")
    return make


def building(cls: type, target: str, values: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Source of the statements (one indent deep) that build a ``cls`` into the local
    ``target`` from ``values``, one expression per field in declaration order, as
    :func:`constructor`'s functions do; and the names those statements read, for the
    namespace the caller executes its source in."""
    params = _fields(cls)
    if len(values) != len(params):
        raise TypeError(f"{cls.__name__} has {len(params)} fields, not {len(values)}")
    draft = type(
        f"_{cls.__name__}Draft",
        (cls,),
        {
            # No slot of its own: ``cls``'s layout, which makes assigning
            # ``__class__`` cheap (CPython compares no slot names for a subclass).
            "__slots__": (),
            # Both, or CPython keeps the slow path of the frozen __delattr__ for
            # every attribute store (the two share one type slot).
            "__setattr__": object.__setattr__,
            "__delattr__": object.__delattr__,
            # ``draft()`` then runs no Python ``__init__`` (not ``cls``'s, which
            # wants the fields) and costs half of ``object.__new__(draft)``, which
            # goes through a generic builtin-method call.
            "__init__": object.__init__,
        },
    )
    draft_name, cls_name = f"_{cls.__name__}_draft", f"_{cls.__name__}"
    statements = (
        f"    {target} = {draft_name}()\n"
        + "".join(f"    {target}.{p.name} = {v}\n" for p, v in zip(params, values, strict=True))
        + f"    {target}.__class__ = {cls_name}\n"
    )
    return statements, {draft_name: draft, cls_name: cls}


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    """``cls``'s fields, if the drafts can build it (see the module's doc)."""
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a slotted dataclass")
    params = dataclasses.fields(cls)
    if hasattr(cls, "__post_init__") or any(
        p.default_factory is not dataclasses.MISSING for p in params
    ):
        raise TypeError(f"{cls.__name__} needs its __init__ (post-init or default factory)")
    return params
