"""Invariant 5: every schema stays compatible, both ways, with every released version.

"Both ways" means a current reader decodes what an old writer wrote (new
consumers replaying ``apex.events``, which never expires) and an old reader
decodes what a current writer writes (consumers not yet upgraded during a
rolling deploy). The checker is the Apache ``avro`` package's, independent of
fastavro, which the codec uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import avro.errors
import avro.name
import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from apex import codec

RELEASES = codec.released_versions()


def raw_schemas(directory: Path) -> dict[str, dict[str, Any]]:
    """The JSON of each ``<full name>.avsc`` of a directory, by full name."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(directory.glob("*.avsc"))}


def avro_schemas(raw: dict[str, dict[str, Any]]) -> dict[str, avro.schema.Schema]:
    """Parse with the ``avro`` package, named types resolved across files.

    Enums are parsed first so the records that use them find them; no record
    refers to another record.
    """
    names = avro.name.Names()
    order = sorted(raw, key=lambda name: (raw[name]["type"] == "record", name))
    return {name: avro.schema.make_avsc_object(raw[name], names) for name in order}


def compatibility_problems(reader: avro.schema.Schema, writer: avro.schema.Schema) -> str | None:
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return None
    return f"{sorted(result.messages)} at {sorted(result.locations)}"


def assert_compatible_both_ways(
    current: avro.schema.Schema, released: avro.schema.Schema, what: str
) -> None:
    backward = compatibility_problems(reader=current, writer=released)
    forward = compatibility_problems(reader=released, writer=current)
    assert backward is None, f"{what}: the current reader cannot read released data: {backward}"
    assert forward is None, f"{what}: a released reader cannot read current data: {forward}"


CURRENT = avro_schemas(raw_schemas(codec.SCHEMA_DIR))
RELEASED = {version.name: avro_schemas(raw_schemas(version)) for version in RELEASES}
RELEASED_PAIRS = [(version, name) for version, schemas in RELEASED.items() for name in schemas]


def test_there_is_a_first_release() -> None:
    assert "v1" in RELEASED


@pytest.mark.parametrize(("version", "name"), RELEASED_PAIRS, ids=lambda v: str(v))
def test_current_schema_is_compatible_both_ways_with_every_released_version(
    version: str, name: str
) -> None:
    assert name in CURRENT, (
        f"{name} was released in {version} but has no current schema: messages written with "
        "it (apex.events keeps them forever) could no longer be decoded"
    )
    assert_compatible_both_ways(CURRENT[name], RELEASED[version][name], f"{name} vs {version}")


@pytest.mark.parametrize(
    "name", [n for n in CURRENT if CURRENT[n].type == "record"], ids=lambda n: str(n)
)
def test_codec_knows_each_schema_by_the_avro_package_fingerprint(name: str) -> None:
    """The codec (fastavro) and the avro package agree on every fingerprint: the
    named types inlined across files give the same Parsing Canonical Form."""
    header = codec.MAGIC + CURRENT[name].fingerprint("CRC-64-AVRO")
    assert codec.schema_name_of(header) == name


@pytest.mark.parametrize(("version", "name"), RELEASED_PAIRS, ids=lambda v: str(v))
def test_codec_registers_every_released_writer_schema(version: str, name: str) -> None:
    if RELEASED[version][name].type != "record":
        return
    header = codec.MAGIC + RELEASED[version][name].fingerprint("CRC-64-AVRO")
    assert codec.schema_name_of(header) == name


# -- the check can fail: deliberate changes -----------------------------------------------------


def _changed(file_name: str, change: Any, record: str | None = None) -> avro.schema.Schema:
    """Record ``record`` (default: ``file_name``) when ``change(raw)`` edits ``file_name``."""
    raw = raw_schemas(codec.SCHEMA_DIR)
    change(raw[file_name])
    return avro_schemas(raw)[record or file_name]


def _add_field(field: dict[str, Any]) -> Any:
    return lambda raw: raw["fields"].append(field)


def _set_field_type(field_name: str, avro_type: Any) -> Any:
    def change(raw: dict[str, Any]) -> None:
        for field in raw["fields"]:
            if field["name"] == field_name:
                field["type"] = avro_type
                field.pop("default", None)

    return change


def _drop_field(field_name: str) -> Any:
    return lambda raw: raw.update(fields=[f for f in raw["fields"] if f["name"] != field_name])


INCOMPATIBLE_CHANGES: dict[str, tuple[str, Any, str]] = {
    # what changes: (file edited, the edit, record checked)
    "new field without a default": (
        "apex.StepSucceeded",
        _add_field({"name": "cost", "type": "long", "doc": "d"}),
        "apex.StepSucceeded",
    ),
    "union branch removed (null)": (
        "apex.RunFailed",
        _set_field_type("step_id", "string"),
        "apex.RunFailed",
    ),
    "type changed": (
        "apex.StepSucceeded",
        _set_field_type("attempt", "string"),
        "apex.StepSucceeded",
    ),
    "field without a default removed": (
        "apex.StepSucceeded",
        _drop_field("step_id"),
        "apex.StepSucceeded",
    ),
    "enum symbol added": (
        "apex.GateWhen",
        lambda raw: raw["symbols"].append("during"),
        "apex.ApprovalRequested",
    ),
}


@pytest.mark.parametrize("change", INCOMPATIBLE_CHANGES, ids=str)
def test_an_incompatible_change_is_reported(change: str) -> None:
    file_name, edit, record = INCOMPATIBLE_CHANGES[change]
    changed = _changed(file_name, edit, record)
    with pytest.raises(AssertionError, match="cannot read"):
        assert_compatible_both_ways(changed, RELEASED["v1"][record], f"{record}: {change}")


def test_a_new_field_with_a_default_is_compatible_both_ways() -> None:
    """The control of the control: the evolution the README recommends passes."""
    changed = _changed(
        "apex.StepSucceeded",
        _add_field({"name": "cost", "type": ["null", "long"], "doc": "d", "default": None}),
    )
    assert_compatible_both_ways(changed, RELEASED["v1"]["apex.StepSucceeded"], "added field")


def test_removing_a_field_with_a_default_is_compatible_both_ways() -> None:
    changed = _changed("apex.ReportTaskFailed", _drop_field("worker_id"))
    assert_compatible_both_ways(changed, RELEASED["v1"]["apex.ReportTaskFailed"], "removed field")
