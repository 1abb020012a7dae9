"""How an agent's exception becomes a failure report: retryable or not.

An agent says what a failure means by what it raises:

- :class:`FatalError` fails the step now; its retry policy is not consulted.
- :class:`RetryableError` asks for another attempt, if the policy has one left.
- Any other exception is classified by its class. ``ValueError`` and
  ``TypeError`` are *not* retryable by default: they mean the input or the
  code is wrong, and the same input will fail the same way (this includes
  ``json.JSONDecodeError`` and ``UnicodeDecodeError``). Everything else —
  timeouts, connection errors, ``RuntimeError``, ``KeyError`` from a flaky
  cache — is retryable. An agent changes the list with
  ``@agent(..., non_retryable=(...))``.

``RetryableError`` and ``FatalError`` win over the list, so
``class QuotaExceeded(RetryableError, ValueError)`` is retried.
"""

from __future__ import annotations

DEFAULT_NON_RETRYABLE: tuple[type[BaseException], ...] = (ValueError, TypeError)
"""Exception classes reported as not retryable unless an agent says otherwise."""

MAX_ERROR_CHARS = 4000
"""Reports carry at most this much of the error text: it is stored in the log forever."""


class RetryableError(Exception):
    """Raise from an agent to report a failure that another attempt may fix."""


class FatalError(Exception):
    """Raise from an agent to fail the step without retrying it."""


def is_retryable(
    error: BaseException, non_retryable: tuple[type[BaseException], ...] = DEFAULT_NON_RETRYABLE
) -> bool:
    """Whether ``error`` should be reported as ``retryable=True``."""
    if isinstance(error, RetryableError):
        return True
    if isinstance(error, FatalError):
        return False
    return not isinstance(error, non_retryable)


def describe(error: BaseException) -> str:
    """The error text of a report: the exception's type, then its message."""
    message = str(error)
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return text
