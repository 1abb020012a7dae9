"""Apex end to end on the real stack: one orchestrator process, one worker process.

    python -m benchmarks.apex_e2e --shape chain5 --concurrency 100 --runs 1000 --json

Each invocation is a deployment of its own: a unique topic prefix (so its own
topics and consumer groups), a fresh ``apex orchestrator`` and
``apex worker benchmarks.apex_agents:agents`` process, deleted and stopped at
the end. This process is the client: it starts runs with :class:`ApexClient`
and reads their results from ``apex.results``, keeping ``--concurrency`` runs in
flight (see benchmarks/loop.py). Product defaults throughout (linger, fetch
wait, partitions, batch); only the worker's concurrency is set, to the same
value the peers' workers get.

``--profile-dir`` samples the orchestrator and the worker with py-spy while the
measured runs go (raw collapsed stacks, summarised by benchmarks/profiling.py).
``--projector`` also runs ``apex projections run`` on a read-model schema of its
own and probes its lag from outside (benchmarks/projection_lag.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from aiokafka.admin import AIOKafkaAdminClient

from apex import codec
from apex.client import ApexClient
from apex.config import Settings
from apex.devstack.topics import delete_topics
from apex.domain.definitions import Ref, StepDefinition, WorkflowDefinition
from apex.domain.messages import RunResult
from apex.kafka.clients import make_consumer, topic_partitions
from benchmarks import hop_timeline, procs
from benchmarks.apex_agents import CAPABILITY
from benchmarks.loop import closed_loop, driver_arguments, emit, report, warm_up
from benchmarks.projection_lag import LagProbe
from benchmarks.sampler import Sampler
from benchmarks.workload import FAN_WIDTH, SHAPES, Shape


def definition(shape: Shape) -> WorkflowDefinition:
    """The shape as an Apex workflow: every step the no-op agent, inputs by reference."""

    def step(step_id: str, *after: str) -> StepDefinition:
        refs = [Ref("steps", (), step_id=a) for a in after]
        return StepDefinition(step_id, CAPABILITY, {"after": refs}, tuple(after))

    if shape.name == "chain5":
        ids = [f"s{i}" for i in range(1, 6)]
        steps = [step(ids[0]), *(step(b, a) for a, b in itertools.pairwise(ids))]
    else:
        fan = [f"b{i}" for i in range(1, FAN_WIDTH + 1)]
        steps = [step("a"), *(step(b, "a") for b in fan), step("join", *fan)]
    return WorkflowDefinition(name=f"bench-{shape.name}", version=1, steps=tuple(steps))


class ResultWatcher:
    """Reads ``apex.results`` from its current end; resolves the future of each run."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._waiting: dict[str, asyncio.Future[RunResult]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        topic = self._settings.topic("results")
        consumer = make_consumer(self._settings)
        await consumer.start()
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # resolve "end" now, before any run starts
        self._task = asyncio.create_task(self._read(consumer))

    async def _read(self, consumer: Any) -> None:
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        result = codec.decode_result(record.value)
                        if isinstance(result, RunResult):
                            future = self._waiting.pop(result.run_id, None)
                            if future is not None and not future.done():
                                future.set_result(result)
        finally:
            await consumer.stop()

    def expect(self, run_id: str) -> asyncio.Future[RunResult]:
        future: asyncio.Future[RunResult] = asyncio.get_running_loop().create_future()
        self._waiting[run_id] = future
        return future

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def run(args: Any) -> dict[str, Any]:
    shape = SHAPES[args.shape]
    tag = f"{shape.name}-c{args.concurrency}-{procs.unique_suffix()}"
    settings = Settings.from_env(topic_prefix=f"bench.{tag}.")
    read_models = f"bench_rm_{tag.replace('-', '_')}" if args.projector else ""
    if read_models:
        settings = replace(settings, read_model_schema=read_models)
    log_dir = Path(args.log_dir) if args.log_dir else procs.WORK_DIR / "apex" / tag
    env = {**procs.settings_env(settings), "PYTHONUNBUFFERED": "1"}
    wf = definition(shape)
    services: dict[str, subprocess.Popen[bytes]] = {}
    profilers: list[subprocess.Popen[bytes]] = []
    probe: LagProbe | None = None

    if args.timeline_dir:
        env[hop_timeline.ENV] = args.timeline_dir

    def start(name: str, *argv: str) -> None:
        command = (
            [sys.executable, args.service_wrapper, *argv]
            if args.service_wrapper
            else procs.python_module("apex", *argv)
        )
        services[name] = procs.spawn(
            command,
            name=name,
            log_dir=log_dir,
            env={**env, "APEX_INSTANCE_ID": f"bench-{name}"},
        )

    try:
        async with ApexClient(settings) as client:
            await client.register(wf)
            start("orchestrator", "orchestrator")
            start(
                "worker",
                *("worker", "benchmarks.apex_agents:agents", "--log-level", "WARNING"),
                *("--concurrency", str(args.worker_concurrency)),
            )
            if read_models:
                migrated = await asyncio.to_thread(
                    subprocess.run,
                    procs.python_module("apex", "projections", "migrate", "--schema", read_models),
                    env={**os.environ, **env},
                    capture_output=True,
                    check=False,
                )
                if migrated.returncode != 0:
                    raise RuntimeError(f"projections migrate failed: {migrated.stderr[-800:]!r}")
                start("projector", "projections", "run")
            watcher = ResultWatcher(settings)
            await watcher.start()

            async def run_one() -> Any:
                for name, proc in services.items():
                    procs.check_alive(proc, name, log_dir)
                run_id = str(uuid.uuid4())
                done = watcher.expect(run_id)
                await client.start_run(wf.name, {}, run_id=run_id)
                result = await done
                if result.status != "completed":
                    raise RuntimeError(f"run {run_id} {result.status}: {result.error}")
                return result.outputs

            try:
                # Warm-up: consumer group joins, first fetches, the topics' first index
                # pages (benchmarks/loop.py); not measured.
                warm = await warm_up(run_one, args)
                broker = _broker_pid(settings)
                sampler = Sampler(
                    {name: proc.pid for name, proc in services.items()},
                    {"broker": broker} if broker else {},
                )
                if args.profile_dir:
                    profilers = start_profilers(
                        [services["orchestrator"], services["worker"]],
                        Path(args.profile_dir),
                        args.max_seconds,
                    )
                if read_models:
                    probe = LagProbe(settings, read_models)
                    probe.start()
                    await probe.settle()
                sampler.begin()
                loop = await closed_loop(
                    run_one,
                    concurrency=args.concurrency,
                    runs=args.runs,
                    max_seconds=args.max_seconds,
                )
                usage = sampler.end()
            finally:
                if probe is not None:
                    await probe.stop()
                for profiler in profilers:
                    stop_profiler(profiler)
                await watcher.stop()
    finally:
        for proc in reversed(services.values()):
            procs.stop(proc)
        with contextlib.suppress(Exception):
            await delete_prefixed_topics(settings)
        if read_models:
            with contextlib.suppress(Exception):
                await _drop_schema(settings, read_models)
    extra: dict[str, Any] = {}
    if probe is not None:
        extra["projection_lag"] = probe.figures()
    return report(
        "apex",
        shape,
        args.concurrency,
        loop,
        warmup_runs=warm.completed,
        warmup_s=round(warm.elapsed_s, 1),
        worker_concurrency=args.worker_concurrency,
        processes=usage,
        topic_prefix=settings.topic_prefix,
        settings={
            "partitions": settings.partitions,
            "linger_ms": settings.linger_ms,
            "fetch_max_wait_ms": settings.fetch_max_wait_ms,
            "orchestrator_batch": settings.orchestrator_batch,
            "otel_exporter": settings.otel_exporter,
            "metrics_port": settings.metrics_port,
        },
        **extra,
    )


def _broker_pid(settings: Settings) -> int | None:
    """The local Kafka broker of this stack: the JVM started with its ``server.properties``
    (not any JVM with APEX_HOME in an argument: another broker may share its jars)."""
    config = str(settings.home / "kafka" / "server.properties")
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "kafka.Kafka" in cmdline and config in cmdline:
            return int(proc.pid)
    return None


async def _drop_schema(settings: Settings, schema: str) -> None:
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        await conn.execute(f'drop schema if exists "{schema}" cascade')
    finally:
        await conn.close()


def start_profilers(
    services: list[subprocess.Popen[bytes]], out_dir: Path, seconds: float
) -> list[subprocess.Popen[bytes]]:
    """py-spy on the orchestrator and the worker, raw collapsed stacks, 100 Hz."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    started = []
    for proc, name in zip(services, ("orchestrator", "worker"), strict=True):
        argv = [
            py_spy, "record", "--pid", str(proc.pid), "--format", "raw", "--rate", "100",
            "--duration", str(int(seconds) + 5), "--nonblocking",
            "--output", str(out_dir / f"{name}.txt"),
        ]  # fmt: skip
        with (out_dir / f"py-spy-{name}.log").open("ab") as log:
            started.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
    return started


def stop_profiler(proc: subprocess.Popen[bytes]) -> None:
    """py-spy writes its output on SIGINT, as on Ctrl-C."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def delete_prefixed_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
        await delete_topics(admin, names)
    finally:
        await admin.close()


def main() -> None:
    parser = driver_arguments(__doc__.splitlines()[0])
    parser.add_argument("--log-dir", default="", help="where the services' logs go")
    parser.add_argument("--profile-dir", default="", help="py-spy the services into this folder")
    parser.add_argument(
        "--projector", action="store_true", help="run the projector too; probe its lag"
    )
    parser.add_argument(
        "--service-wrapper",
        default="",
        help="a script run instead of `python -m apex` for the services, with the same "
        "arguments (to A/B a change without editing the product: patch, then call apex.cli)",
    )
    parser.add_argument(
        "--timeline-dir",
        default="",
        help="note the services' Kafka requests here, to cut each hop into segments "
        "(benchmarks/hop_timeline.py; chain5 at one run in flight)",
    )
    args = parser.parse_args()
    if args.timeline_dir and args.service_wrapper:
        parser.error("--timeline-dir is a service wrapper of its own: not with --service-wrapper")
    if args.timeline_dir:
        folder = Path(args.timeline_dir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        args.timeline_dir, args.service_wrapper = str(folder), hop_timeline.__file__
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    emit(asyncio.run(run(args)), args.json)


if __name__ == "__main__":
    main()
