"""``apex worker module:object``: run agents until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from apex import service
from apex.cli._console import print_error
from apex.config import Settings
from apex.worker import WorkerError
from apex.worker.runner import LoadError, load_worker, run_worker


def register(root: typer.Typer) -> None:
    root.command("worker")(worker)


def worker(
    target: Annotated[
        str,
        typer.Argument(
            help="module:object — a Worker, a factory returning one, an @agent function or a "
            "list of them; or a module, to run every @agent function in it.",
            show_default=False,
        ),
    ],
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1, help="Tasks run at once per capability, for every agent (overrides theirs)."
        ),
    ] = None,
    grace: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Seconds in-flight tasks get to finish on SIGTERM (default: APEX_WORKER_GRACE_S).",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Run agent workers; SIGTERM or Ctrl-C stops them gracefully (twice: at once).

    Tasks still running when the grace period ends are cancelled without a
    report and delivered again to the next worker: nothing is lost.
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings.from_env()
    try:
        runner = load_worker(
            target, settings, concurrency=concurrency, grace_s=grace, app_dir=os.getcwd()
        )
    except (LoadError, TypeError, ValueError) as exc:
        print_error(f"apex worker: cannot load {target}", str(exc))
        raise typer.Exit(2) from None
    try:
        service.run(run_worker(runner), settings)
    except WorkerError as exc:
        print_error("apex worker failed", str(exc))
        raise typer.Exit(1) from None
