"""The Python client against the real stack: commands in, read models and results out."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from apex import ApexClient, RunResult, SyncApexClient
from apex.client import TopicNotFound
from apex.kafka.clients import make_consumer
from streams.orchestrator import DEFINITIONS_REFRESH_S
from tests.conftest import TopicFactory
from tests.integration.deployment import Deployment, deployment, eventually, gated, hello

__all__ = ["deployment"]


async def test_start_a_run_and_wait_for_its_result(deployment: Deployment) -> None:
    client = deployment.client
    await client.register(hello("wait"))

    run_id = await client.start_run("wait", {"who": "ada"}, idempotency_key="order-1")
    again = await client.start_run("wait", {"who": "ada"}, idempotency_key="order-1")
    result = (await client.wait([run_id], timeout_s=30))[run_id]

    assert again == run_id
    assert result.status == "completed"
    assert result.outputs == {"greet": {"echo": {"who": "ada"}, "step": "greet"}}
    run = await eventually(lambda: _finished(client, run_id), what="the run in the read models")
    assert (run.definition, run.status, run.input) == ("wait@1", "completed", {"who": "ada"})
    assert [(s.step_id, s.status, s.attempt) for s in run.steps] == [("greet", "succeeded", 1)]


async def test_a_run_without_a_version_starts_the_latest_registered(
    deployment: Deployment,
) -> None:
    client = deployment.client
    await client.register(hello("evolving"))
    first = await client.start_run("evolving", {"who": "ada"})
    assert (await client.wait([first], timeout_s=30))[first].definition == "evolving@1"

    await client.register(replace(hello("evolving"), version=2))
    await asyncio.sleep(DEFINITIONS_REFRESH_S)  # "latest" may lag registration this long
    second = await client.start_run("evolving", {"who": "ada"})
    assert (await client.wait([second], timeout_s=30))[second].definition == "evolving@2"


async def test_list_runs_filters_and_pages_with_a_cursor(deployment: Deployment) -> None:
    client = deployment.client
    await client.register(hello("paged"))
    run_ids = [await client.start_run("paged", {"who": f"n{i}"}) for i in range(5)]
    await client.wait(run_ids, timeout_s=30)

    async def all_projected() -> bool:
        page = await client.list_runs(definition="paged", status="completed", limit=10)
        return len(page.runs) == 5

    await eventually(all_projected, what="five completed runs projected")
    seen: list[str] = []
    cursor = None
    for _ in range(3):
        page = await client.list_runs(definition="paged@1", limit=2, cursor=cursor)
        seen.extend(r.run_id for r in page.runs)
        cursor = page.next_cursor
    assert sorted(seen) == sorted(run_ids) and cursor is None
    assert (await client.list_runs(definition="paged", status="failed")).runs == []
    later = await client.list_runs(definition="paged", since=datetime.now(UTC))
    assert later.runs == []


async def test_approve_from_the_inbox(deployment: Deployment) -> None:
    client = deployment.client
    await client.register(gated("inbox"))
    run_id = await client.start_run("inbox")

    async def waiting() -> list[object]:
        inbox = await client.pending_approvals(definition="inbox")
        return [p for p in inbox if p.run_id == run_id]

    (pending,) = await eventually(waiting, what="the approval in the inbox")
    assert (pending.step_id, pending.when, pending.definition_name) == ("ship", "before", "inbox")
    await client.approve(run_id, "ship", approver="grace", comment="ship it")

    result = (await client.wait([run_id], timeout_s=30))[run_id]
    assert result.status == "completed"
    run = await eventually(lambda: _finished(client, run_id), what="the approved run projected")
    (approval,) = run.approvals
    assert (approval.status, approval.decided_by, approval.note) == ("granted", "grace", "ship it")
    assert await client.pending_approvals(definition="inbox") == []


async def test_a_subscriber_from_a_point_in_time_sees_exactly_the_later_results(
    deployment: Deployment,
) -> None:
    client = deployment.client
    await client.register(hello("pit"))
    before = [await client.start_run("pit", {"who": f"early{i}"}) for i in range(3)]
    await client.wait(before, timeout_s=30)
    await asyncio.sleep(0.05)  # record timestamps are milliseconds
    point = datetime.now(UTC)
    after = [await client.start_run("pit", {"who": f"late{i}"}) for i in range(3)]
    await client.wait(after, timeout_s=30)

    subscription = client.subscribe(definition="pit", from_time=point, idle_timeout_s=1.5)
    results = await subscription.collect()

    run_results = [r for r in results if isinstance(r, RunResult)]
    steps = [r for r in results if not isinstance(r, RunResult)]
    assert sorted(r.run_id for r in run_results) == sorted(after)
    assert sorted(r.run_id for r in steps) == sorted(after)  # "greet" is published
    only_runs = await client.subscribe(
        definition="pit", kind="run", from_time=point, idle_timeout_s=1.5
    ).collect()
    assert sorted(r.run_id for r in only_runs) == sorted(after)


async def test_two_independent_subscribers_both_see_everything(deployment: Deployment) -> None:
    client = deployment.client
    await client.register(hello("twins"))
    async with (
        client.subscribe(definition="twins", kind="run", limit=4) as first,
        client.subscribe(definition="twins", kind="run", limit=4) as second,
    ):
        run_ids = [await client.start_run("twins", {"who": str(i)}) for i in range(4)]
        got_first, got_second = await asyncio.wait_for(
            asyncio.gather(first.collect(), second.collect()), 30
        )
    assert sorted(r.run_id for r in got_first) == sorted(run_ids)
    assert sorted(r.run_id for r in got_second) == sorted(run_ids)
    one_run = await client.subscribe(
        run_id=run_ids[2], from_time=datetime(2000, 1, 1, tzinfo=UTC), idle_timeout_s=1
    ).collect()
    assert {r.run_id for r in one_run} == {run_ids[2]}


async def test_publish_puts_business_events_on_upstream_topics(
    deployment: Deployment, topic_factory: TopicFactory
) -> None:
    client = deployment.client
    topic = await topic_factory("shop.orders")

    first = await client.publish(topic, {"order": 7, "note": "café"}, key="o-7")
    second = await client.publish(topic, b"\x00raw", key=b"o-8")

    consumer = make_consumer(deployment.settings, topic)
    await consumer.start()
    try:
        records = []
        while len(records) < 2:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 10)
            records.extend(r for rs in batch.values() for r in rs)
    finally:
        await consumer.stop()
    assert (first.topic, first.offset, second.offset) == (topic, 0, 1)
    assert json.loads(records[0].value) == {"order": 7, "note": "café"}
    assert (records[0].key, records[1].key, records[1].value) == (b"o-7", b"o-8", b"\x00raw")
    with pytest.raises(ValueError, match="one of Apex's own topics"):
        await client.publish(deployment.settings.topic("commands"), {})
    with pytest.raises(TopicNotFound, match="does not exist"):
        await client.publish(topic + ".missing", {})


async def test_the_sync_client_runs_its_own_loop(deployment: Deployment) -> None:
    await deployment.client.register(hello("sync"))
    point = datetime.now(UTC)

    def script() -> tuple[str, str, list[str], str]:
        with SyncApexClient(deployment.settings) as apex:
            run_id = apex.start_run("sync", {"who": "bob"})
            status = apex.wait([run_id], timeout_s=30)[run_id].status
            seen = [
                r.run_id
                for r in apex.subscribe(definition="sync", kind="run", from_time=point, limit=1)
            ]
            definition = apex.get_definition("sync")
            assert definition is not None
            return run_id, status, seen, definition.key

    run_id, status, seen, key = await asyncio.to_thread(script)
    assert (status, seen, key) == ("completed", [run_id], "sync@1")


async def test_a_client_that_is_not_started_says_so(deployment: Deployment) -> None:
    client = ApexClient(deployment.settings)
    with pytest.raises(RuntimeError, match="not started"):
        await client.start_run("wait")


async def _finished(client: ApexClient, run_id: str) -> object:
    run = await client.get_run(run_id)
    return run if run is not None and run.finished else None
