"""Where a hop's time goes: a timeline of the services' Kafka requests, cut into segments.

Run as the services' wrapper (``python -m benchmarks.apex_e2e ... --timeline-dir
DIR`` starts them as ``python benchmarks/hop_timeline.py <apex arguments>``),
each service writes ``DIR/<service>-<pid>.json`` when it stops: every aiokafka
request it sent (type, sent, answered), every consumer poll that returned
records, and — in the worker — each no-op step's arrival with its
predecessor's finish. Then::

    python -m benchmarks.hop_timeline DIR [--json]

cuts each hop (a step finished → the next step delivered to its worker,
chain5 at one run in flight) into contiguous segments, each ending where the
next begins, so their means add up to the mean hop:

=====================  ===============================================================
worker: report         the agent returned → the worker's report request sent
report → orchestrator  the report's Produce and the orchestrator's fetch of it
orchestrator: decide   the command in hand → AddPartitionsToTxn sent (decode, decide,
                       encode, aiokafka)
AddPartitionsToTxn     its round trip
→ Produce              client: the answer handled → the Produce sent
Produce                its round trip, the broker's verification of the transaction in it
→ EndTxn               client
EndTxn                 its round trip
markers → worker       EndTxn answered → the worker's poll returns the dispatch (the
                       broker writes the markers; the stable offset moves; the fetch
                       answers)
worker: start          the dispatch in hand → the agent called
=====================  ===============================================================

With Kafka's transaction protocol v2 (``apex.kafka.txn_v2``) there is no
AddPartitionsToTxn: deciding ends when the Produce is sent, and the segments
are those of :data:`SEGMENTS_V2`.

At one run in flight the timeline is a single thread of work, so each hop's
requests are found by walking back from its arrival: the worker's last poll
before it, the orchestrator's last EndTxn answered before that, and so on. A
hop whose chain cannot be found that way (a rebalance, a retry) is counted and
left out.
"""

from __future__ import annotations

import argparse
import atexit
import bisect
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, too

from benchmarks.stats import percentile

ENV = "APEX_HOP_TIMELINE"
"""The folder the wrapped services write their timelines to."""

SEGMENTS: tuple[tuple[str, str], ...] = (
    ("worker: report", "the agent returned -> the report request sent"),
    ("report -> orchestrator", "the report's Produce and the orchestrator's fetch"),
    ("orchestrator: decide", "the command in hand -> AddPartitionsToTxn sent"),
    ("AddPartitionsToTxn", "round trip"),
    ("-> Produce", "client"),
    ("Produce", "round trip, with the broker's verification"),
    ("-> EndTxn", "client"),
    ("EndTxn", "round trip"),
    ("markers -> worker", "EndTxn answered -> the worker's poll returns the dispatch"),
    ("worker: start", "the dispatch in hand -> the agent called"),
)
"""The segments of a hop whose transaction speaks Kafka's first protocol."""
SEGMENTS_V2: tuple[tuple[str, str], ...] = (
    *SEGMENTS[:2],
    ("orchestrator: decide", "the command in hand -> the transaction's Produce sent"),
    ("Produce", "round trip; the leader adds the partitions to the transaction (KIP-890)"),
    *SEGMENTS[6:],
)
"""The segments of a hop whose transaction speaks the second (no AddPartitionsToTxn)."""
ROUND_TRIPS = frozenset({"AddPartitionsToTxn", "Produce", "EndTxn"})
"""Segments that are one request's round trip to the broker, answer included."""

Event = Sequence[Any]
"""``(kind, start, end_or_count)``: a request (name, sent, answered), a poll
(``"poll"``, returned, records) or an arrival (``"arrived"``, arrived, predecessor finished)."""


# -- recording (in the wrapped service) ------------------------------------------------------


def record(folder: str, service: str) -> None:
    """Patch aiokafka and the no-op agent's hop to note the timeline; write it at exit."""
    import aiokafka.client as client
    from aiokafka import AIOKafkaConsumer

    import benchmarks.workload as workload

    events: list[tuple[str, float, float]] = []
    send, getmany, hop = client.AIOKafkaClient.send, AIOKafkaConsumer.getmany, workload.hop

    async def timed_send(self: Any, node_id: Any, request: Any, **kw: Any) -> Any:
        sent = time.time()
        try:
            return await send(self, node_id, request, **kw)
        finally:
            events.append((request_name(request), sent, time.time()))

    async def noted_getmany(self: Any, *args: Any, **kw: Any) -> Any:
        polled = await getmany(self, *args, **kw)
        if polled:
            events.append(("poll", time.time(), sum(len(r) for r in polled.values())))
        return polled

    def noted_hop(after: list[dict[str, Any]] | None) -> dict[str, Any]:
        arrived = time.time()
        if after:
            events.append(("arrived", arrived, max(float(o["done_at"]) for o in after)))
        return hop(after)

    client.AIOKafkaClient.send = timed_send
    AIOKafkaConsumer.getmany = noted_getmany
    workload.hop = noted_hop

    def dump() -> None:
        path = Path(folder) / f"{service}-{os.getpid()}.json"
        path.write_text(json.dumps(events))

    atexit.register(dump)


def request_name(request: Any) -> str:
    """``ProduceRequest`` and ``ProduceV12Request`` (apex.kafka.txn_v2) are both "Produce"."""
    return re.sub(r"V\d+$", "", type(request).__name__.removesuffix("Request"))


# -- analysis ---------------------------------------------------------------------------------


class _Track:
    """One service's events of one kind, sorted, searchable by time."""

    def __init__(self, events: Sequence[Event], kind: str, by_end: bool = False) -> None:
        chosen = [e for e in events if e[0] == kind]
        self.events = sorted(chosen, key=lambda e: e[2] if by_end else e[1])
        self.keys = [e[2] if by_end else e[1] for e in self.events]

    def last_before(self, t: float) -> Event | None:
        i = bisect.bisect_right(self.keys, t) - 1
        return self.events[i] if i >= 0 else None


def protocol(orchestrator: Sequence[Event]) -> int:
    """The transaction protocol the orchestrator spoke: 2 when it sent no AddPartitionsToTxn."""
    return 1 if any(e[0] == "AddPartitionsToTxn" for e in orchestrator) else 2


def hops(orchestrator: Sequence[Event], worker: Sequence[Event]) -> tuple[list[list[float]], int]:
    """Each hop's segments (seconds, in :data:`SEGMENTS` or :data:`SEGMENTS_V2` order, by the
    :func:`protocol`), and how many hops were left out."""
    v1 = protocol(orchestrator) == 1
    polls = _Track(worker, "poll")
    reports = _Track(worker, "Produce")
    commands = _Track(orchestrator, "poll")
    adds = _Track(orchestrator, "AddPartitionsToTxn", by_end=True)
    produces = _Track(orchestrator, "Produce", by_end=True)
    ends = _Track(orchestrator, "EndTxn", by_end=True)
    found: list[list[float]] = []
    left_out = 0
    for _, arrived, finished in (e for e in worker if e[0] == "arrived"):
        poll = polls.last_before(arrived)
        end = ends.last_before(poll[1]) if poll else None
        produce = produces.last_before(end[1]) if end else None
        first = (adds.last_before(produce[1]) if v1 else produce) if produce else None
        command = commands.last_before(first[1]) if first else None
        report = reports.last_before(command[1]) if command else None
        if report is None or report[1] < finished:  # a link missing, or another hop's report
            left_out += 1
            continue
        assert poll and end and produce and first and command  # found, since report was
        marks = [finished, report[1], command[1], first[1]]
        marks += [first[2], produce[1], produce[2]] if v1 else [produce[2]]
        marks += [end[1], end[2], poll[1], arrived]
        found.append([b - a for a, b in itertools.pairwise(marks)])
    return found, left_out


def breakdown(orchestrator: Sequence[Event], worker: Sequence[Event]) -> dict[str, Any]:
    """Per segment (and the whole hop): p50, mean and p90 in ms; the broker's share."""
    found, left_out = hops(orchestrator, worker)
    rows: list[dict[str, Any]] = []
    version = protocol(orchestrator)
    names = [name for name, _ in (SEGMENTS if version == 1 else SEGMENTS_V2)] + ["hop"]
    for i, name in enumerate(names):
        values = [sum(h) if name == "hop" else h[i] for h in found]
        if not values:
            break
        rows.append(
            {
                "segment": name,
                "p50_ms": round(percentile(values, 50) * 1000, 3),
                "mean_ms": round(sum(values) / len(values) * 1000, 3),
                "p90_ms": round(percentile(values, 90) * 1000, 3),
            }
        )
    means: dict[str, float] = {row["segment"]: row["mean_ms"] for row in rows}
    return {
        "hops": len(found),
        "left_out": left_out,
        "transaction_protocol": version,
        "round_trips": sum(1 for name in names if name in ROUND_TRIPS),
        "segments": rows,
        "round_trips_mean_ms": round(sum(means.get(name, 0.0) for name in ROUND_TRIPS), 3),
    }


def load(folder: Path) -> tuple[list[Event], list[Event]]:
    """The orchestrator's and the worker's timelines written in ``folder``."""
    found: dict[str, list[Event]] = {}
    for service in ("orchestrator", "worker"):
        paths = sorted(folder.glob(f"{service}-*.json"))
        if not paths:
            raise FileNotFoundError(f"no {service} timeline in {folder} ({service}-<pid>.json)")
        found[service] = [e for path in paths for e in json.loads(path.read_text())]
    return found["orchestrator"], found["worker"]


def table(result: dict[str, Any]) -> str:
    """The breakdown as a Markdown table."""
    notes = dict(SEGMENTS if result.get("transaction_protocol", 1) == 1 else SEGMENTS_V2)
    lines = ["| segment | what | p50 ms | mean ms | p90 ms |", "|---|---|---:|---:|---:|"]
    for row in result["segments"]:
        what = notes.get(row["segment"], "the whole hop")
        lines.append(
            f"| {row['segment']} | {what} | {row['p50_ms']:.2f} | {row['mean_ms']:.2f} | "
            f"{row['p90_ms']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where the services wrote their timelines")
    parser.add_argument("--json", action="store_true", help="print the breakdown as JSON")
    args = parser.parse_args()
    result = breakdown(*load(args.folder))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(table(result))
    print(
        f"\n{result['hops']} hops ({result['left_out']} left out); the transaction's "
        f"{result['round_trips']} round trips (protocol v{result['transaction_protocol']}): "
        f"{result['round_trips_mean_ms']:.2f} ms of the mean hop"
    )


if __name__ == "__main__":
    if os.environ.get(ENV):
        # As the services' wrapper: ``APEX_HOP_TIMELINE=DIR hop_timeline.py <apex arguments>``.
        record(os.environ[ENV], sys.argv[1])
        from apex.cli import main as apex_main

        sys.argv = ["apex", *sys.argv[1:]]
        apex_main()
    else:
        main()
