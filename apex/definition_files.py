"""Workflow definition files: YAML or JSON text, to and from definitions.

The format itself is documented in :mod:`apex.domain.definition_format` (and
described for editors by ``schemas/definition.schema.json``); this module only
adds what the pure core must not do: reading files and parsing text. Every
error is a :class:`~apex.domain.errors.DefinitionError` whose ``source`` names
the file, so a user sees ``flows/triage.yaml: ...`` with each problem.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

import yaml

from apex.domain.definition_format import definition_from_dict, definition_to_dict
from apex.domain.definitions import WorkflowDefinition
from apex.domain.errors import DefinitionError, Problem
from apex.domain.validation import ensure_valid

Format = Literal["yaml", "json"]

_FORMATS: dict[str, Format] = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}


def load_definition(
    path: str | os.PathLike[str],
    *,
    capabilities: Collection[str] | None = None,
    check: bool = True,
) -> WorkflowDefinition:
    """Read a ``.yaml``, ``.yml`` or ``.json`` definition file and validate it.

    With ``check=False`` only the format is checked (see
    :func:`apex.domain.validation.validate` for the rest). Raise
    :class:`DefinitionError` naming the file; a missing file raises
    :class:`FileNotFoundError` as usual.
    """
    path = Path(path)
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        message = f"unsupported file type {path.suffix or '(none)'!r}: use .yaml, .yml or .json"
        raise DefinitionError([Problem(None, "", message)], source=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        message = f"not UTF-8 text (byte {error.start}); save the file as UTF-8"
        raise DefinitionError([Problem(None, "", message)], source=str(path)) from None
    return parse_definition(text, kind, source=str(path), capabilities=capabilities, check=check)


def parse_definition(
    text: str,
    format: Format,
    *,
    source: str = "<text>",
    capabilities: Collection[str] | None = None,
    check: bool = True,
) -> WorkflowDefinition:
    """Parse YAML or JSON text (e.g. an HTTP request body) into a definition."""
    data = _decode(text, format, source)
    if data is None:
        message = "empty document: a definition is a mapping with name, version and steps"
        raise DefinitionError([Problem(None, "", message)], source=source)
    try:
        definition = definition_from_dict(data)
        return ensure_valid(definition, capabilities=capabilities) if check else definition
    except DefinitionError as error:
        raise error.with_source(source) from None


def dump_definition(defn: WorkflowDefinition, format: Format = "yaml") -> str:
    """The definition's canonical form as YAML or JSON text; loading it gives ``defn`` back."""
    data = definition_to_dict(defn)
    if format == "json":
        return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if format == "yaml":
        dumped: str = yaml.dump(
            data, Dumper=_YamlDumper, sort_keys=False, allow_unicode=True, width=100
        )
        return dumped
    raise ValueError(f"unknown definition format {format!r}: use 'yaml' or 'json'")


# -- decoding ---------------------------------------------------------------------------


def _decode(text: str, format: Format, source: str) -> Any:
    def refuse(where: str, message: str) -> DefinitionError:
        return DefinitionError([Problem(None, where, message)], source=source)

    if format == "json":
        try:
            return json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as error:
            where = f"line {error.lineno}, column {error.colno}"
            raise refuse(where, f"not valid JSON: {error.msg}") from None
        except _DuplicateKey as error:
            raise refuse("", f"not valid JSON: {error}") from None
    try:
        return yaml.load(text, Loader=_StrictYamlLoader)  # a SafeLoader subclass: safe
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = error.problem or error.context or "cannot be parsed"
        raise refuse(where, f"not valid YAML: {problem}") from None
    except yaml.YAMLError as error:
        raise refuse("", f"not valid YAML: {error}") from None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with one key twice are refused: the second would hide the first."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(f"key {key!r} appears twice in one object")
        data[key] = value
    return data


class _StrictYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that has one key twice
    (plain PyYAML keeps the last silently, dropping half of a step)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class explains it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"key {key!r} appears twice",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _YamlDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting strings that hold a Unicode line break.

    With ``allow_unicode`` PyYAML writes NEL (U+0085) and the line and paragraph
    separators raw inside plain or single-quoted scalars, where a reader folds
    them into spaces; double quotes escape them, so the text round-trips.
    """

    def represent_str(self, data: str) -> yaml.ScalarNode:
        if any(ch in data for ch in "\x85\u2028\u2029"):
            return self.represent_scalar("tag:yaml.org,2002:str", data, style='"')
        return super().represent_str(data)


_YamlDumper.add_representer(str, _YamlDumper.represent_str)
