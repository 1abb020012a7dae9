"""Find the agents a command line names, and run them until a signal says stop.

``apex worker TARGET`` accepts, like uvicorn's ``module:app``:

- ``pkg.module:name`` where ``name`` (a dotted path inside the module) is
  a :class:`Worker`, an ``@agent`` function, a list/tuple/set of them, a
  module, or a factory — a function called with the ``Settings`` (if it takes
  a parameter) or with nothing, returning any of the former;
- ``pkg.module``: every ``@agent`` function that module holds (defined or
  imported there).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import signal
import sys
from collections.abc import Iterable
from types import ModuleType

from apex import telemetry
from apex.config import Settings
from apex.worker.agent import Agent
from apex.worker.worker import Worker, WorkerError

log = logging.getLogger("apex.worker")


class LoadError(ValueError):
    """``TARGET`` does not name something a worker can run; the message says why."""


def load_worker(
    target: str,
    settings: Settings,
    *,
    concurrency: int | None = None,
    grace_s: float | None = None,
    app_dir: str | None = None,
) -> Worker:
    """The :class:`Worker` that ``target`` names, with the command line's overrides.

    ``app_dir`` is put first on ``sys.path`` (the CLI passes the current
    directory, so ``apex worker my_agents:agents`` finds ``./my_agents.py``).
    """
    if app_dir is not None and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    worker = as_worker(load_target(target), settings, target)
    if concurrency is not None:
        worker.concurrency = concurrency
    if grace_s is not None:
        worker.grace_s = grace_s
    return worker


def load_target(target: str) -> object:
    """Import ``module`` or ``module:attr.path`` and return what it names."""
    module_name, _, attr_path = target.partition(":")
    if not module_name or (":" in target and not attr_path):
        raise LoadError(
            f"{target!r}: expected 'module:object' or 'module', e.g. 'my_agents:agents'"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise LoadError(
                f"{target!r}: no module named {exc.name!r} (is its folder the current directory "
                "or on PYTHONPATH?)"
            ) from exc
        raise  # the module exists but one of its own imports is missing: show that
    found: object = module
    for name in attr_path.split(".") if attr_path else ():
        try:
            found = getattr(found, name)
        except AttributeError:
            raise LoadError(f"{target!r}: {module_name} has no attribute {attr_path!r}") from None
    return found


def as_worker(found: object, settings: Settings, target: str = "") -> Worker:
    """Turn what a target names into a :class:`Worker` (see the module documentation)."""
    if (
        callable(found)
        and not isinstance(found, (Agent, Worker, ModuleType))
        and not inspect.isclass(found)
    ):
        found = _call_factory(found, settings, target)
    if isinstance(found, Worker):
        return found
    agents = agents_in(found, target)
    if not agents:
        raise LoadError(
            f"{target!r} holds no @agent functions: decorate an async function with "
            "@agent('capability'), or name a Worker, a list of agents or a factory"
        )
    return Worker(settings, agents)


def agents_in(found: object, target: str = "") -> list[Agent]:
    """The agents that a value (an agent, an iterable of agents, a module) holds."""
    if isinstance(found, Agent):
        return [found]
    if isinstance(found, ModuleType):
        return _unique(v for v in vars(found).values() if isinstance(v, Agent))
    if isinstance(found, (list, tuple, set, frozenset)):
        strays = [item for item in found if not isinstance(item, Agent)]
        if strays:
            raise LoadError(
                f"{target!r}: every item must be an @agent function; these are not: "
                + ", ".join(repr(s) for s in strays[:5])
            )
        return _unique(found)
    raise LoadError(
        f"{target!r} is a {type(found).__name__}: expected a Worker, an @agent function, a list "
        "of them, a module, or a factory returning one of those"
    )


async def run_worker(worker: Worker) -> None:
    """Run ``worker`` until SIGTERM or SIGINT (a second one skips the grace period).

    The worker process's entry point: unless the application set telemetry up
    itself, it does so from the worker's settings (``apex-worker``), gives the
    logs trace and run ids, and flushes the spans on the way out.
    """
    owned = telemetry.current() is None
    if owned:
        try:
            telemetry.setup(worker.settings, "apex-worker")
        except (ValueError, OSError) as exc:  # a bad exporter name, a metrics port in use
            raise WorkerError(f"worker {worker.worker_id} cannot start: {exc}") from exc
    telemetry.configure_logging(worker.settings.log_format)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, _on_signal, worker, sig)
    try:
        await worker.run()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if owned:
            telemetry.shutdown()


def _on_signal(worker: Worker, sig: signal.Signals) -> None:
    log.info(
        "%s: stopping; in-flight tasks have %.1f s to finish (send it again to stop now)",
        sig.name,
        worker.grace_s,
    )
    worker.stop()


def _call_factory(factory: object, settings: Settings, target: str) -> object:
    assert callable(factory)
    if inspect.iscoroutinefunction(factory):
        raise LoadError(f"{target!r}: a factory must be a plain function, not `async def`")
    try:
        wants_settings = len(inspect.signature(factory).parameters) > 0
    except (TypeError, ValueError):
        wants_settings = False
    return factory(settings) if wants_settings else factory()


def _unique(agents: Iterable[Agent]) -> list[Agent]:
    seen: dict[int, Agent] = {}
    for item in agents:
        seen.setdefault(id(item), item)
    return list(seen.values())
