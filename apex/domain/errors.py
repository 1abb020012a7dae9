"""Errors of the pure core that a user of Apex can meet.

A workflow definition is checked in two passes — its format
(:mod:`apex.domain.definition_format`) and its meaning
(:mod:`apex.domain.validation`) — and each pass collects every problem it
finds rather than stopping at the first, so one edit can fix them all.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a definition.

    ``step_id`` names the step (``None`` for the workflow itself or for a step
    without a usable id); ``field`` is the path inside the step or the
    workflow, e.g. ``retry.max_attempts`` or ``inputs.doc``, empty when the
    problem is about the step as a whole.
    """

    step_id: str | None
    field: str
    message: str

    def __str__(self) -> str:
        where = [f"step {self.step_id!r}"] if self.step_id is not None else []
        if self.field:
            where.append(self.field)
        return ": ".join([*where, self.message])


class DefinitionError(ValueError):
    """A workflow definition was refused; ``problems`` says every reason.

    ``source`` names where the definition came from (a file path) when known.
    """

    def __init__(self, problems: Sequence[Problem], *, source: str | None = None) -> None:
        self.problems: list[Problem] = list(problems)
        self.source = source
        super().__init__(self.problems)

    def with_source(self, source: str) -> DefinitionError:
        """The same problems, attributed to ``source`` (e.g. the file they came from)."""
        return DefinitionError(self.problems, source=source)

    def __str__(self) -> str:
        count = len(self.problems)
        head = f"{self.source}: " if self.source else ""
        lines = [f"{head}invalid workflow definition ({count} problem{'' if count == 1 else 's'}):"]
        lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest option, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
