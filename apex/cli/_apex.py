"""What the client-facing commands share: running a client, JSON out, parsing options.

Exit statuses: 0 done; 1 the operation failed or found nothing (the message
says why); 2 the command line itself was wrong (Typer's usage errors).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from apex.cli._console import print_error
from apex.config import Settings

T = TypeVar("T")

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON (one document, or one per line) for scripts.")
]


def with_client(action: Callable[[Any], Awaitable[T]], *, what: str) -> T:
    """Run ``action(client)`` with a started :class:`ApexClient`; errors become exit 1."""
    from aiokafka.errors import KafkaError
    from sqlalchemy.exc import SQLAlchemyError

    from apex.client import ApexClient
    from apex.domain.errors import DefinitionError

    async def main() -> T:
        async with ApexClient(Settings.from_env()) as client:
            return await action(client)

    try:
        return asyncio.run(main())
    except DefinitionError as exc:
        fail(f"{what}: invalid workflow definition", str(exc))
    except (ValueError, LookupError, TimeoutError) as exc:
        fail(f"{what} failed", str(exc))
    except KafkaError as exc:
        fail(f"{what}: Kafka did not answer", f"{exc!r}\nIs the stack up? `apex dev status`")
    except (SQLAlchemyError, OSError) as exc:
        fail(
            f"{what}: the read models could not be read",
            f"{exc}\nIs PostgreSQL up and the schema migrated? `apex projections migrate`",
        )


def fail(title: str, message: str, code: int = 1) -> NoReturn:
    print_error(title, message)
    raise typer.Exit(code)


def echo_json(value: Any) -> None:
    """One JSON document on one line (datetimes as ISO 8601)."""
    typer.echo(json.dumps(value, ensure_ascii=False, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def json_argument(text: str | None, path: Path | None, *, what: str, default: Any = None) -> Any:
    """A JSON value given inline (``--input '{"a": 1}'``) or as a file (``-`` is stdin)."""
    if text is not None and path is not None:
        fail(f"give {what} inline or as a file, not both", f"--{what} and --{what}-file", code=2)
    if path is not None:
        try:
            text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        except OSError as exc:
            fail(f"cannot read the {what} file", str(exc))
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError as exc:
        fail(f"the {what} is not JSON", f"{exc} (in: {text[:80]!r})", code=2)


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(text: str | None, option: str) -> datetime | None:
    """``2024-05-01T10:00:00+02:00`` (no offset: UTC), ``2024-05-01``, or ``15m`` / ``2h`` ago."""
    if text is None:
        return None
    relative = _RELATIVE.match(text.strip())
    if relative:
        amount, unit = float(relative.group(1)), _UNITS[relative.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: amount})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        fail(
            f"{option}: not a time",
            f"{text!r}: use ISO 8601 (2024-05-01T10:00:00+02:00, 2024-05-01) or an age "
            "(30s, 15m, 2h, 1d)",
            code=2,
        )
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def shown_time(value: datetime | None) -> str:
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def shown_json(value: Any, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=_default)
    return text if len(text) <= width else text[: width - 1] + "…"


STATUS_STYLE = {
    "completed": "green",
    "succeeded": "green",
    "running": "cyan",
    "dispatched": "cyan",
    "scheduled": "blue",
    "retry_wait": "yellow",
    "awaiting_approval": "magenta",
    "awaiting_signal": "magenta",
    "pending": "dim",
    "skipped": "dim",
    "failed": "red",
    "cancelled": "yellow",
}


def styled(status: str) -> str:
    style = STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status
