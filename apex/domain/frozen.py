"""Fast construction of the domain's frozen dataclasses, for the decider's hot path.

A frozen dataclass's ``__init__`` must get past its own ``__setattr__`` (which
refuses every assignment), so it sets each field with ``object.__setattr__``:
a generic call of 150-300 ns a field on the dev machine. Folding one event
builds the event, a ``RunState`` (19 fields) and a ``StepState`` (12 fields),
so that guard alone was most of the decider's time.

:func:`constructor` builds the same object another way: it fills an instance of
a *draft* class — the same slots on the same base, but the plain
``object.__setattr__`` — with ordinary attribute stores, then makes it an
instance of the frozen class by assigning ``__class__`` (which CPython allows
between classes of the same layout). The result is indistinguishable from
``cls(...)``: same type, same slots, frozen from then on. Only classes without
``__post_init__`` and without default factories qualify; :func:`constructor`
checks that, and that it builds what ``cls(...)`` builds, when it is created.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


def constructor(cls: type[T]) -> Callable[..., T]:
    """``cls``'s fields by position (or name), in declaration order; ~5x faster than ``cls``."""
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a slotted dataclass")
    params = dataclasses.fields(cls)
    if hasattr(cls, "__post_init__") or any(
        p.default_factory is not dataclasses.MISSING for p in params
    ):
        raise TypeError(f"{cls.__name__} needs its __init__ (post-init or default factory)")
    draft = type(
        f"_{cls.__name__}Draft",
        cls.__bases__,
        {
            "__slots__": cls.__dict__["__slots__"],
            # Both, or CPython keeps the slow path of a base's frozen __delattr__
            # for every attribute store (the two share one type slot).
            "__setattr__": object.__setattr__,
            "__delattr__": object.__delattr__,
            # ``draft()`` then runs no Python ``__init__`` (not the base's, which
            # wants the fields) and costs half of ``object.__new__(draft)``, which
            # goes through a generic builtin-method call.
            "__init__": object.__init__,
        },
    )
    names = [p.name for p in params]
    # Defaults of the trailing fields that have one (a positional signature
    # cannot give a default to a field followed by one without).
    defaults: list[Any] = []
    for p in reversed(params):
        if p.default is dataclasses.MISSING:
            break
        defaults.insert(0, p.default)
    source = (
        f"def make({', '.join(names)}):\n"
        "    obj = draft()\n"
        + "".join(f"    obj.{name} = {name}\n" for name in names)
        + "    obj.__class__ = cls\n"
        "    return obj\n"
    )
    namespace: dict[str, Any] = {"draft": draft, "cls": cls}
    exec(source, namespace)  # as dataclasses builds __init__: no per-field loop at run time
    make: Callable[..., T] = namespace["make"]
    make.__defaults__ = tuple(defaults)
    make.__qualname__ = make.__name__ = f"make_{cls.__name__}"
    sample = dict(zip(names, range(len(names)), strict=True))
    built = make(**sample)
    if type(built) is not cls or built != cls(**sample):
        raise TypeError(f"the fast constructor of {cls.__name__} does not build a {cls.__name__}")
    return make


def become(obj: object, cls: type[T]) -> T:
    """``obj`` itself, made an instance of ``cls`` (the last step of :func:`constructor`'s build).

    For a mutable draft that holds exactly ``cls``'s slots: ``obj``'s class must
    declare the same ``__slots__``, in the same order, on the same base, or CPython
    refuses with ``TypeError``. Whoever held ``obj`` as a draft must be done with it.
    """
    obj.__class__ = cls
    return cast(T, obj)
