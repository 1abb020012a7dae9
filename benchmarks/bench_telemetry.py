"""What telemetry costs the orchestrator's hot path: off, metrics on, tracing on.

    .venv/bin/python benchmarks/bench_telemetry.py [--runs 1000] [--repeats 5] [--json]

The loop is the orchestrator's own batch processing (``Orchestrator._process``:
decode, decide + evolve, encode events with their chain hashes and headers,
encode dispatches and results, "send" them) over the commands that drive runs
of a 10-step DAG from ``StartRun`` to ``RunCompleted`` (21 commands a run), in
batches of ``APEX_ORCHESTRATOR_BATCH``. Kafka is replaced by a producer whose
sends complete at once, so only the CPU of the process is measured. Every
record carries a ``traceparent`` of its run's trace (as from a traced client
and worker), so the traced modes do the full work: extract, a span per
command, a span per dispatch, inject.

Modes, each on fresh orchestrator state, interleaved in a rotating order, best
of ``--repeats``:

- ``baseline``: the same loop with no telemetry code at all (a copy of the
  orchestrator's batch path before instrumentation, kept below);
- ``off``: the instrumented orchestrator, telemetry not set up (the default);
- ``metrics``: metrics on (OTel SDK aggregation; no exporter pulling);
- ``tracing``: tracing on, spans handed to a ``BatchSpanProcessor`` whose
  exporter drops them (so the export thread's cost is not the loop's);
- ``sampled``: tracing on, but only one run in ten sampled by its client
  (``APEX_OTEL_SAMPLE_RATIO=0.1`` there): the other runs' records carry an
  unsampled ``traceparent``, so their spans are non-recording;
- ``both``: tracing and metrics.

Ratios are to ``baseline``. The clock is this thread's CPU time by default
(``--clock wall`` for elapsed time): steadier on a shared machine, and the span
export thread's work is not the loop's. Also printed: the flag check's cost.
Figures only: nothing is asserted, and no test times anything.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from aiokafka import TopicPartition
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from apex import codec
from apex.chain import CHAIN_HEADER, GENESIS, link
from apex.config import Settings
from apex.domain import commands as cmd
from apex.domain import events as ev
from apex.domain.decider import decide_and_evolve
from apex.domain.definitions import WorkflowDefinition
from apex.domain.messages import RunResult, StepResult, TaskDispatch
from apex.domain.outbox import outbound
from apex.domain.state import RunState
from apex.kafka.dlq import dead_letter
from apex.kafka.topology import task_topic
from apex.telemetry import flags, metrics, tracing
from benchmarks.bench_decider import ten_step_dag
from streams.orchestrator import Orchestrator, _Batch, _Out, _Partition

MODES = ("baseline", "off", "metrics", "tracing", "sampled", "both")
SAMPLED_SHARE = 10
"""``sampled``: one run in this many was sampled by its client (``APEX_OTEL_SAMPLE_RATIO=0.1``)."""


# -- the workload --------------------------------------------------------------------------


def command_stream(runs: int, definition: WorkflowDefinition) -> list[cmd.Command]:
    """The commands of ``runs`` runs, interleaved in rounds as many runs in flight would be."""
    per_run: list[list[cmd.Command]] = []
    for n in range(runs):
        run_id = str(uuid.UUID(int=n))
        start = cmd.StartRun(
            command_id=f"{run_id}/start",
            run_id=run_id,
            issued_at_ms=1,
            definition_name=definition.name,
            definition_version=1,
            input={"doc": "a document"},
            jitter_seed=n,
        )
        commands: list[cmd.Command] = [start]
        pending: list[cmd.Command] = [replace(start, definition=definition)]
        state: RunState | None = None
        while pending:
            command = pending.pop(0)
            events, state = decide_and_evolve(state, command)
            for event in events:
                if isinstance(event, ev.StepDispatched):
                    common: dict[str, Any] = {
                        "run_id": run_id, "step_id": event.step_id, "attempt": 1
                    }  # fmt: skip
                    started = cmd.ReportTaskStarted(
                        command_id=f"{run_id}/{event.step_id}/s", issued_at_ms=2,
                        worker_id="w", **common,
                    )  # fmt: skip
                    done = cmd.ReportTaskSucceeded(
                        command_id=f"{run_id}/{event.step_id}/ok", issued_at_ms=3,
                        worker_id="w", output={"text": "t", "label": "x", "answer": 1}, **common,
                    )  # fmt: skip
                    pending += [started, done]
                    commands += [started, done]
        per_run.append(commands)
    stream: list[cmd.Command] = []
    for position in range(max(len(c) for c in per_run)):
        stream.extend(c[position] for c in per_run if position < len(c))
    return stream


def records(stream: Sequence[cmd.Command], topic: str, sampled_share: int = 1) -> list[Any]:
    """Consumer records as aiokafka hands them over, each with its run's trace context.

    One run in ``sampled_share`` has a sampled context; the others' are unsampled.
    """
    out = []
    for offset, command in enumerate(stream):
        number = uuid.UUID(command.run_id).int
        trace_id = f"{number + 1:032x}"
        span_id = f"{offset + 1:016x}"
        sampled = "01" if number % sampled_share == 0 else "00"
        out.append(
            SimpleNamespace(
                topic=topic,
                partition=0,
                offset=offset,
                key=command.run_id.encode(),
                value=codec.encode_command(command),
                headers=(("traceparent", f"00-{trace_id}-{span_id}-{sampled}".encode()),),
                timestamp=0,
            )
        )
    return out


class _InstantProducer:
    """A transactional producer whose sends are acknowledged at once."""

    def __init__(self) -> None:
        self.sent = 0
        loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = loop.create_future()
        self._done.set_result(None)

    async def begin_transaction(self) -> None:
        pass

    async def send(self, topic: str, **_: Any) -> asyncio.Future[None]:
        self.sent += 1
        return self._done

    async def send_offsets_to_transaction(self, *_: Any) -> None:
        pass

    async def commit_transaction(self) -> None:
        pass


class _Dropping(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


# -- the loop before instrumentation ----------------------------------------------------------


class Baseline(Orchestrator):
    """The batch path with no telemetry code: what instrumentation is compared against."""

    async def _process(self, part: _Partition, records: Sequence[Any]) -> None:
        producer = part.producer
        batch = _Batch()
        await producer.begin_transaction()
        sends = []
        for record in records:
            for topic, key, value, headers in await self._handle(part, batch, record):
                sends.append(await producer.send(topic, value=value, key=key, headers=headers))
        await asyncio.gather(*sends)
        await producer.send_offsets_to_transaction({part.tp: records[-1].offset + 1}, self.group)
        await producer.commit_transaction()
        part.runs.update(batch.runs)
        part.chains.update(batch.chains)
        self.stats.transactions += 1
        self.stats.commands += len(records)

    async def _handle(
        self, part: _Partition, batch: _Batch, record: Any, *_telemetry: Any
    ) -> list[_Out]:
        try:
            command = codec.decode_command(record.value)
            key = record.key.decode() if record.key is not None else None
            if key != command.run_id:
                raise ValueError("commands must be keyed by run id")
            state = batch.runs.get(command.run_id) or part.runs.get(command.run_id)
            if isinstance(command, cmd.StartRun) and state is None:
                command = await self._resolve_definition(command)
            events, after = decide_and_evolve(state, command)
        except Exception as exc:
            self.stats.dead_letters += 1
            letter = dead_letter(self.settings, record, "orchestrator", exc)
            return [(letter.topic, letter.key, letter.value, letter.headers)]
        if after is not None:
            batch.runs[command.run_id] = after
        self.stats.events += len(events)
        chain = batch.chains.get(command.run_id) or part.chains.get(command.run_id, GENESIS)
        out: list[_Out] = []
        for event in events:
            value = codec.encode_event(event)
            if event.seq == 0:
                out.append((self._events_topic, record.key, value, [(CHAIN_HEADER, link(GENESIS, value))]))  # fmt: skip  # noqa: E501
                continue
            chain = link(chain, value)
            out.append((self._events_topic, record.key, value, [(CHAIN_HEADER, chain)]))
        if after is not None:
            batch.chains[command.run_id] = chain
        key_bytes = command.run_id.encode()
        for message in outbound(after, events):
            if isinstance(message, TaskDispatch):
                topic = task_topic(self.settings, message.capability)
                out.append((topic, key_bytes, codec.encode_dispatch(message), []))
            elif isinstance(message, RunResult):
                out.append((self._results_topic, key_bytes, codec.encode_run_result(message), []))
            elif isinstance(message, StepResult):
                out.append((self._results_topic, key_bytes, codec.encode_step_result(message), []))
        return out


# -- measuring --------------------------------------------------------------------------------


def switch(mode: str) -> None:
    """Turn telemetry on or off the way :func:`apex.telemetry.setup` does, minus exporters."""
    tracing_on = mode in ("tracing", "sampled", "both")
    metrics_on = mode in ("metrics", "both")
    if tracing_on:
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(_Dropping(), max_queue_size=8192))
        tracing._install(provider.get_tracer("apex"))
    else:
        tracing._install(trace.NoOpTracer())
    if metrics_on:
        meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("apex")
        metrics._install(meter)
    else:
        metrics._install(None)
    flags.TRACING, flags.METRICS = tracing_on, metrics_on


async def measure(
    mode: str,
    batches: list[list[Any]],
    settings: Settings,
    definition: WorkflowDefinition,
    clock: Callable[[], float] = time.thread_time,
) -> float:
    """Seconds to process every batch, on fresh state."""
    switch(mode)
    orchestrator = (Baseline if mode == "baseline" else Orchestrator)(settings)

    async def resolve(command: cmd.StartRun) -> cmd.StartRun:
        return replace(command, definition=definition)

    orchestrator._resolve_definition = resolve  # type: ignore[method-assign]
    tp = TopicPartition(settings.topic("commands"), 0)
    part = _Partition(tp, _InstantProducer())
    gc.collect()
    started = clock()
    for batch in batches:
        await orchestrator._process(part, batch)
    elapsed = clock() - started
    assert orchestrator.stats.dead_letters == 0, "the workload must decide cleanly"
    switch("off")
    return elapsed


def flag_check_ns(iterations: int = 2_000_000) -> tuple[float, float]:
    """ns per loop iteration with and without an ``if flags.TRACING:`` (tracing off)."""
    flags.TRACING = False
    started = time.perf_counter_ns()
    for _ in range(iterations):
        pass
    empty = time.perf_counter_ns() - started
    started = time.perf_counter_ns()
    for _ in range(iterations):
        if flags.TRACING:
            pass
    checked = time.perf_counter_ns() - started
    return empty / iterations, checked / iterations


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs of the 10-step DAG")
    parser.add_argument("--repeats", type=int, default=5, help="passes per mode (best counts)")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: this thread's CPU time (steady on a busy machine); wall: elapsed time",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    settings = Settings(topic_prefix="bench.")
    definition = ten_step_dag()
    stream = command_stream(args.runs, definition)
    size = settings.orchestrator_batch

    def batched(all_records: list[Any]) -> list[list[Any]]:
        return [all_records[i : i + size] for i in range(0, len(all_records), size)]

    batches = batched(records(stream, settings.topic("commands")))
    sampled = batched(records(stream, settings.topic("commands"), SAMPLED_SHARE))

    best: dict[str, float] = {}
    for repeat in range(args.repeats):
        shift = repeat % len(MODES)  # rotate the order: no mode always runs first
        for mode in MODES[shift:] + MODES[:shift]:
            work = sampled if mode == "sampled" else batches
            clock = time.thread_time if args.clock == "cpu" else time.perf_counter
            elapsed = await measure(mode, work, settings, definition, clock)
            best[mode] = min(best.get(mode, elapsed), elapsed)
    empty_ns, checked_ns = flag_check_ns()

    commands = len(stream)
    figures = {
        mode: {
            "us_per_command": best[mode] / commands * 1e6,
            "commands_per_s": commands / best[mode],
            "ratio_to_baseline": best[mode] / best["baseline"],
        }
        for mode in MODES
    }
    if args.json:
        print(json.dumps({
            "runs": args.runs,
            "commands": commands,
            "batch": size,
            "repeats": args.repeats,
            "clock": args.clock,
            "modes": figures,
            "flag_check_ns": checked_ns - empty_ns,
            "python": platform.python_version(),
        }))  # fmt: skip
        return
    print(
        f"orchestrator batch path: {args.runs:,} runs of a 10-step DAG, {commands:,} commands, "
        f"batches of {size}, best of {args.repeats}, {args.clock} clock"
    )
    print(f"{'mode':<10}{'µs/command':>12}{'commands/s':>14}{'x baseline':>12}")
    for mode in MODES:
        f = figures[mode]
        print(
            f"{mode:<10}{f['us_per_command']:>12.2f}{f['commands_per_s']:>14,.0f}"
            f"{f['ratio_to_baseline']:>12.3f}"
        )
    print(
        f"the flag check itself: {checked_ns - empty_ns:.1f} ns "
        f"(loop {empty_ns:.1f} ns, with `if flags.TRACING:` {checked_ns:.1f} ns)"
    )


if __name__ == "__main__":
    asyncio.run(main())
