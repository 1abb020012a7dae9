# The C part of the codec (apex/_avro.c): one message type's Avro writer and reader.
from collections.abc import Callable
from typing import Any

STRING: int
LONG: int
BOOLEAN: int
ENUM: int
OPTIONAL_STRING: int
OPTIONAL_LONG: int

_Field = tuple[
    str, int, Callable[[Any], Any] | None, Callable[[Any], Any] | None, tuple[str, ...] | None
]

class Record:
    def __init__(
        self,
        header: bytes,
        cls: type,
        fields: tuple[_Field, ...],
        make: Callable[..., Any] | None,
    ) -> None: ...
    def write(self, message: Any, /) -> bytes: ...
    def read(self, data: bytes | memoryview, /) -> Any: ...
