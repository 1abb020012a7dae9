"""``apex orchestrator`` and ``apex timers``: the stream processors, run until SIGTERM.

Each is a process of its own: it sets telemetry up from its settings
(``APEX_OTEL_EXPORTER``, ``APEX_METRICS_PORT``; ``service.name`` apex-orchestrator
or apex-timers unless ``APEX_SERVICE_NAME`` says otherwise), logs with trace
and run ids (``APEX_LOG_FORMAT``), and flushes its spans when it stops.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Protocol

import typer

from apex import service, telemetry
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

    settings = Settings.from_env()
    _serve(Orchestrator(settings), verbose, settings=settings, service_name="apex-orchestrator")


def timers(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at debug level."),
) -> None:
    """Run the timer service: fire retry backoffs, timeouts and deadlines from the log."""
    from streams.timers import TimerService

    settings = Settings.from_env()
    _serve(TimerService(settings), verbose, settings=settings, service_name="apex-timers")


def configure_logging(verbose: bool, log_format: str = "text") -> None:
    """Root logging of an Apex process: level, format, trace and run ids on each line."""
    telemetry.configure_logging(log_format, logging.DEBUG if verbose else logging.INFO)


def _serve(
    processor: _Processor,
    verbose: bool,
    *,
    settings: Settings | None = None,
    service_name: str | None = None,
) -> None:
    """Run ``processor`` until SIGTERM/SIGINT, with telemetry and logging set up.

    ``service_name`` defaults to ``apex-<class name>`` (``apex-projector``).
    """
    settings = settings or Settings.from_env()
    service_name = service_name or f"apex-{type(processor).__name__.lower()}"
    configure_logging(verbose, settings.log_format)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, processor.stop)
        await processor.run()

    try:
        telemetry.setup(settings, service_name)
        service.run(main(), settings)
    except Exception as exc:  # a failed transaction, a lost broker: say so, exit non-zero
        logging.getLogger("apex").critical("stopped: %s", exc)
        raise typer.Exit(1) from exc
    finally:
        telemetry.shutdown()
