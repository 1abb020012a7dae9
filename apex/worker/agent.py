"""``@agent``: turn an async function into the executor of a capability.

    @agent("summarize", concurrency=4)
    async def summarize(input: dict, ctx: TaskContext) -> dict:
        ctx.logger.info("summarizing %d words", len(input["text"].split()))
        return {"summary": input["text"][:100]}

The function receives the step's input (a JSON value) and, if it declares a
second positional parameter, the :class:`~apex.worker.context.TaskContext`. It
returns the step's output (a JSON value) or raises (see
:mod:`apex.worker.errors`). The decorated object is an :class:`Agent`: still
callable like the function, so unit tests can call it directly.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from apex.config import Settings
from apex.kafka.topology import task_topic
from apex.worker.context import TaskContext

AgentFunction = Callable[..., Coroutine[Any, Any, Any]]


def agent(
    capability: str,
    *,
    concurrency: int | None = None,
    heartbeat_s: float | None = None,
    non_retryable: tuple[type[BaseException], ...] | None = None,
) -> Callable[[AgentFunction], Agent]:
    """Declare ``async def f(input[, ctx])`` as the agent of ``capability``.

    ``concurrency``: tasks of this capability one worker runs at once (default:
    ``APEX_WORKER_CONCURRENCY``). ``heartbeat_s``: seconds between automatic
    heartbeats while a task runs (default: ``APEX_WORKER_HEARTBEAT_S``, which
    by default is a third of the step's timeout). ``non_retryable``: exception
    classes reported as not retryable (default: ``ValueError``, ``TypeError``).
    """
    _check_capability(capability)
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"agent {capability!r}: concurrency must be at least 1, got {concurrency}")
    if heartbeat_s is not None and heartbeat_s < 0:
        raise ValueError(
            f"agent {capability!r}: heartbeat_s must be positive (or 0: a third of the step's "
            f"timeout), got {heartbeat_s}"
        )

    def decorate(fn: AgentFunction) -> Agent:
        return Agent(
            capability=capability,
            fn=fn,
            takes_context=takes_context(fn, capability),
            concurrency=concurrency,
            heartbeat_s=heartbeat_s,
            non_retryable=tuple(non_retryable) if non_retryable is not None else None,
        )

    return decorate


@dataclass(eq=False)
class Agent:
    """An async function bound to a capability, with its execution limits.

    It carries the function's name and docstring (``functools.update_wrapper``),
    hence a plain dataclass rather than a frozen one.
    """

    capability: str
    fn: AgentFunction
    takes_context: bool
    concurrency: int | None = None
    heartbeat_s: float | None = None
    non_retryable: tuple[type[BaseException], ...] | None = None

    def __post_init__(self) -> None:
        functools.update_wrapper(self, self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Call the function itself (for tests): ``await summarize({...}, ctx)``."""
        return self.fn(*args, **kwargs)

    async def invoke(self, input: Any, ctx: TaskContext) -> Any:
        """Run one task: pass the context only if the function asks for it."""
        if self.takes_context:
            return await self.fn(input, ctx)
        return await self.fn(input)

    def __repr__(self) -> str:
        return f"<Agent {self.capability!r}: {_name(self.fn)}>"


def takes_context(fn: Callable[..., Any], capability: str) -> bool:
    """Whether ``fn`` is ``f(input, ctx)`` (True) or ``f(input)`` (False).

    Raises ``TypeError`` naming the function when it is not an ``async def``
    or its parameters fit neither form.
    """
    where = f"agent {capability!r} ({_name(fn)})"
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"{where} must be an `async def` function: a blocking function would stall every "
            "task of the worker (wrap blocking work in `await asyncio.to_thread(...)`)"
        )
    params = list(inspect.signature(fn).parameters.values())
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    required_keyword = [
        p.name
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    if required_keyword:
        raise TypeError(
            f"{where} has keyword-only parameters without defaults {required_keyword}: "
            "an agent is called as f(input) or f(input, ctx)"
        )
    has_varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    if len(required) > 2:
        raise TypeError(
            f"{where} requires {len(required)} positional parameters "
            f"({', '.join(p.name for p in required)}): "
            "an agent is called as f(input) or f(input, ctx)"
        )
    if not positional and not has_varargs:
        raise TypeError(f"{where} takes no parameters: it must accept the step input, f(input)")
    return len(positional) >= 2 or has_varargs


def _check_capability(capability: str) -> None:
    try:
        task_topic(Settings(), capability)  # the one rule for what can name a topic
    except ValueError as exc:
        raise ValueError(f"@agent({capability!r}): {exc}") from None


def _name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}.{getattr(fn, '__qualname__', repr(fn))}"
