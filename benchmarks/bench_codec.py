"""Avro codec: encode and decode per event, next to raw fastavro on the same record.

    .venv/bin/python benchmarks/bench_codec.py [--iterations 20000] [--json]

For ``StepSucceeded`` (the hot event: one per step) and ``RunStarted`` (once
per run; carries a ten-step definition as canonical JSON) it times:

- ``codec``: ``encode_event`` (dataclass -> canonical JSON fields -> header +
  Avro body) and ``decode_event`` (fingerprint lookup -> Avro -> dataclass);
- ``raw``: fastavro ``schemaless_writer`` / ``schemaless_reader`` alone, with a
  fresh ``BytesIO``, on the very record dict the codec hands to fastavro.

``RunStarted`` is measured twice: as the orchestrator meets it (the same
definition object for many runs: the codec's definition caches hit) and
"cold", where every call carries a definition the codec has not seen.

Each call is timed on its own (``perf_counter_ns``) after a warm-up, so the p99
shows real outliers (GC included); codec and raw alternate in blocks of calls.
The ratio codec/raw is of the medians. The target (DESIGN.md) is < 10 µs for
encode + decode of one event. Figures only: nothing here is asserted, and the
test suite never times anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from apex import codec
from apex.domain.definition_format import definition_from_dict
from apex.domain.events import Event, RunStarted, StepSucceeded

TARGET_US = 10.0
"""DESIGN.md: Avro encode + decode of one event."""
BLOCK = 500
"""Calls timed in a row before switching between codec and raw."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000, help="timed calls per case")
    parser.add_argument("--warmup", type=int, default=2_000, help="untimed calls first")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    step_succeeded, run_started = sample_events()
    calls = args.iterations + args.warmup
    results = [
        measure("StepSucceeded", [step_succeeded], [step_succeeded], args),
        measure("RunStarted", [run_started], [run_started], args),
        measure(
            "RunStarted, cold",
            distinct_definitions(run_started, calls, "e"),
            distinct_definitions(run_started, calls, "d"),
            args,
        ),
    ]
    report = {"machine": machine(), "iterations": args.iterations, "events": results}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


def sample_events() -> tuple[StepSucceeded, RunStarted]:
    step_succeeded = StepSucceeded(
        run_id="run-01J9Z3K8Q4T7W2X5Y6",
        seq=17,
        causation_id="cmd-01J9Z3K9A1B2C3D4E5",
        correlation_id="order-778812",
        occurred_at_ms=1_727_000_123_456,
        step_id="classify",
        attempt=1,
        output={"label": "billing", "confidence": 0.93, "tags": ["refund", "urgent"]},
    )
    run_started = RunStarted(
        run_id="run-01J9Z3K8Q4T7W2X5Y6",
        seq=1,
        causation_id="cmd-01J9Z3K8Q4T7W2X5Y0",
        correlation_id="order-778812",
        occurred_at_ms=1_727_000_120_000,
        definition=ten_step_definition(),
        input={"text": "My card was charged twice for order 778812.", "customer": {"tier": "gold"}},
        idempotency_key="order-778812",
        jitter_seed=424242,
    )
    return step_succeeded, run_started


def distinct_definitions(event: RunStarted, count: int, tag: str) -> list[Event]:
    """Copies of ``event`` whose definitions differ (by name): no cache can hit."""
    return [
        dataclasses.replace(
            event, definition=dataclasses.replace(event.definition, name=f"triage-{tag}{i}")
        )
        for i in range(count)
    ]


def ten_step_definition() -> Any:
    """Fan-out and join: parse -> 8 analyses -> route (the decider benchmark's shape)."""
    branches = [f"analyze_{i}" for i in range(8)]
    steps: list[dict[str, Any]] = [
        {
            "id": "parse",
            "capability": "parse",
            "inputs": {"text": "$.input.text"},
            "retry": {"max_attempts": 3, "initial_backoff_ms": 500, "jitter": 0.2},
            "timeout_ms": 30_000,
            "output": {"doc": "object", "lang": "string"},
        },
        *(
            {
                "id": branch,
                "capability": "call-llm",
                "depends_on": ["parse"],
                "inputs": {"doc": "$.steps.parse.output.doc", "prompt": f"aspect {i}"},
                "retry": {"max_attempts": 5},
                "timeout_ms": 120_000,
            }
            for i, branch in enumerate(branches)
        ),
        {
            "id": "route",
            "capability": "route",
            "depends_on": branches,
            "inputs": {b: f"$.steps.{b}.output" for b in branches},
            "approval": {"when": "after", "deadline_ms": 86_400_000},
            "publish": True,
        },
    ]
    return definition_from_dict(
        {"name": "ticket_triage", "version": 3, "input": {"text": "string"}, "steps": steps}
    )


def measure(
    label: str, to_encode: list[Event], to_decode: list[Event], args: argparse.Namespace
) -> dict[str, Any]:
    """Codec and raw timings; the codec cycles through the events it is given."""
    encoded = [codec.encode_event(event) for event in to_decode]
    event, data = to_encode[0], encoded[0]
    schema = codec.schema_of(type(event))
    record = fastavro.schemaless_reader(io.BytesIO(data[codec.HEADER_SIZE :]), schema, None)
    body = data[codec.HEADER_SIZE :]

    def raw_write(_: int) -> bytes:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema, record)
        return buffer.getvalue()

    def raw_read(_: int) -> Any:
        return fastavro.schemaless_reader(io.BytesIO(body), schema, None)

    def codec_encode(i: int) -> bytes:
        return codec.encode_event(to_encode[i % len(to_encode)])

    def codec_decode(i: int) -> Event:
        return codec.decode_event(encoded[i % len(encoded)])

    cases = {"encode": (codec_encode, raw_write), "decode": (codec_decode, raw_read)}
    rows: dict[str, dict[str, Any]] = {}
    for operation, (with_codec, raw) in cases.items():
        codec_ns, raw_ns = interleaved_timings(with_codec, raw, args.iterations, args.warmup)
        rows[operation] = {"codec": percentiles(codec_ns), "raw": percentiles(raw_ns)}
    round_trip = {
        side: {"median_us": sum(rows[op][side]["median_us"] for op in rows)}
        for side in ("codec", "raw")
    }
    rows["encode + decode (sum of medians)"] = round_trip
    for row in rows.values():
        row["ratio"] = row["codec"]["median_us"] / row["raw"]["median_us"]
    return {"event": label, "bytes": len(data), "operations": rows}


def interleaved_timings(
    first: Callable[[int], object], second: Callable[[int], object], iterations: int, warmup: int
) -> tuple[list[int], list[int]]:
    """Nanoseconds of each call of both, in alternating blocks of ``BLOCK`` calls.

    Alternating keeps the ratio fair when the machine's load changes during
    the run (other processes share the two cores). Call ``i`` gets ``i``;
    warm-up calls come first.
    """
    for i in range(warmup):
        first(i)
        second(i)
    samples: tuple[list[int], list[int]] = ([], [])
    for block in range(warmup, warmup + iterations, BLOCK):
        indexes = range(block, min(block + BLOCK, warmup + iterations))
        samples[0].extend(timings(first, indexes))
        samples[1].extend(timings(second, indexes))
    return samples


def timings(call: Callable[[int], object], indexes: range) -> list[int]:
    clock = time.perf_counter_ns
    samples = []
    for i in indexes:
        start = clock()
        call(i)
        samples.append(clock() - start)
    return samples


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "median_us": statistics.median(ordered) / 1000,
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000,
    }


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "fastavro": fastavro.__version__,
        "fastavro_compiled": type(fastavro.schemaless_writer).__name__ != "function",
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
    }


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    info = report["machine"]
    table = Table(
        title=(f"Avro codec vs raw fastavro: {report['iterations']:,} calls per case, µs per call"),
        caption=(
            f"Python {info['python']}, fastavro {info['fastavro']}"
            f"{'' if info['fastavro_compiled'] else ' (pure Python!)'}, {info['cpus']} CPUs, "
            f"load {info['load_average_1m']:.2f}. Ratio: codec median / raw median."
        ),
    )
    table.add_column("event")
    table.add_column("bytes", justify="right")
    table.add_column("operation")
    for column in ("codec p50", "codec p99", "raw p50", "raw p99", "ratio"):
        table.add_column(column, justify="right")
    for result in report["events"]:
        name, size = result["event"], str(result["bytes"])
        for operation, row in result["operations"].items():
            summed = "sum" in operation
            codec_median = row["codec"]["median_us"]
            style = ""
            if summed:
                style = "bold green" if codec_median < TARGET_US else "bold red"
            table.add_row(
                name,
                size,
                "enc + dec" if summed else operation,
                f"{codec_median:.2f}",
                "" if summed else f"{row['codec']['p99_us']:.2f}",
                f"{row['raw']['median_us']:.2f}",
                "" if summed else f"{row['raw']['p99_us']:.2f}",
                f"{row['ratio']:.2f}x",
                style=style or None,
            )
            name = size = ""
    console = Console(width=max(100, Console().width))
    console.print(table)
    console.print(
        f"Target (DESIGN.md): encode + decode of one event < {TARGET_US:.0f} µs; "
        "'enc + dec' is the sum of the two medians."
    )


if __name__ == "__main__":
    raise SystemExit(main())
