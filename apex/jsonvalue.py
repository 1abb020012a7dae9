"""Canonical JSON: the one text form of a JSON value that Apex writes.

Inputs, outputs and payloads are arbitrary JSON values; on the wire (Avro
``string`` fields, see ``schemas/avro/README.md``) and wherever two encodings
of the same value must compare equal (idempotency, audits) they are written in
one canonical form: keys sorted, no insignificant whitespace, UTF-8 text
rather than ``\\u`` escapes, and no ``NaN`` or ``Infinity`` (they are not JSON,
and are refused both ways).

Tuples are written as arrays and so read back as lists. Object keys should be
strings: like :func:`json.dumps`, a number, bool or None key is written as its
JSON text (``{1: x}`` reads back as ``{"1": x}``); checking every key of every
value would cost a second walk over it on the hot path.

Both functions run once per JSON field of every Avro message, so they call the
standard library's C encoder and scanner directly instead of going through
``json.dumps``/``json.loads``, which rebuild an encoder and run two regular
expressions per call (about 1 µs each, measured). The output is the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _stdlib_encoder
from typing import Any

__all__ = ["dumps_canonical", "loads"]


def dumps_canonical(value: Any) -> str:
    """The canonical JSON text of ``value``; ``ValueError`` when it is not JSON."""
    try:
        return _encode(value)
    except TypeError as exc:  # a non-JSON object, or sort_keys over mixed key types
        raise ValueError(f"not a JSON value: {exc}") from exc
    except RecursionError as exc:
        raise ValueError("not a JSON value: nested too deeply (or circular)") from exc


def loads(text: str) -> Any:
    """Parse JSON text; ``ValueError`` (``json.JSONDecodeError``) when it is not JSON.

    ``NaN``, ``Infinity`` and ``-Infinity`` are refused: canonical JSON never
    holds them, and a float that cannot be written back must not get in.
    """
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:
        value, end = None, -1  # not even a value at offset 0: let decode() say why
    if end != len(text):  # leading/trailing whitespace, trailing data, or an error
        return _DECODER.decode(text)
    return value


# -- the standard library's encoder and scanner, configured once ------------------------------

_ENCODER = json.JSONEncoder(
    sort_keys=True,
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,
)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _refuse_object(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_scan_once = _DECODER.scan_once  # type: ignore[attr-defined]  # set by JSONDecoder.__init__


def _encoder() -> Callable[[Any], str]:
    """``JSONEncoder.encode`` without its per-call setup, when the C encoder exists.

    The C encoder is what ``JSONEncoder`` itself uses; circular-reference
    markers are off (a cycle ends in RecursionError, reported as not JSON).
    If it is missing or behaves differently, the public encoder is used.
    """
    c_make_encoder = getattr(_stdlib_encoder, "c_make_encoder", None)  # None without _json
    if c_make_encoder is None:
        return _ENCODER.encode
    try:
        iterencode = c_make_encoder(
            None,  # markers: no circular-reference check
            _refuse_object,  # default
            _stdlib_encoder.encode_basestring,  # ensure_ascii=False
            None,  # indent
            ":",  # key separator
            ",",  # item separator
            True,  # sort_keys
            False,  # skipkeys
            False,  # allow_nan
        )
    except TypeError:  # another signature (a future Python)
        return _ENCODER.encode

    def encode(value: Any) -> str:
        return "".join(iterencode(value, 0))

    sample = {"b": [1, 2.5, None, True, "é\n"], "a": {"z": -0.0, "y": "x"}}
    try:
        agrees = encode(sample) == _ENCODER.encode(sample) and encode("s") == '"s"'
    except Exception:
        agrees = False
    return encode if agrees else _ENCODER.encode


_encode = _encoder()
