"""``apex orchestrator`` and ``apex timers``: the stream processors, run until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Protocol

import typer

from apex.config import Settings


class _Processor(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None: ...


def register(root: typer.Typer) -> None:
    root.command("orchestrator")(orchestrator)
    root.command("timers")(timers)


def orchestrator(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at debug level."),
) -> None:
    """Run an orchestrator process: decide commands, append events, dispatch steps.

    Start several: they share the partitions of apex.commands as one consumer group.
    """
    from streams.orchestrator import Orchestrator

    _serve(Orchestrator(Settings.from_env()), verbose)


def timers(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at debug level."),
) -> None:
    """Run the timer service: fire retry backoffs, timeouts and deadlines from the log."""
    from streams.timers import TimerService

    _serve(TimerService(Settings.from_env()), verbose)


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def _serve(processor: _Processor, verbose: bool) -> None:
    configure_logging(verbose)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, processor.stop)
        await processor.run()

    try:
        asyncio.run(main())
    except Exception as exc:  # a failed transaction, a lost broker: say so, exit non-zero
        logging.getLogger("apex").critical("stopped: %s", exc)
        raise typer.Exit(1) from exc


