"""The HTTP gateway on uvicorn, against the real stack: runs, definitions, approvals, auth."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from apex.domain.definition_format import definition_to_dict
from apex.gateway import GatewaySettings
from tests.conftest import TopicFactory
from tests.integration.deployment import (
    Deployment,
    GatewayServer,
    deployment,
    eventually,
    gated,
    hello,
)

__all__ = ["deployment"]

UPSTREAM = "test.gateway.upstream"


@pytest.fixture(scope="module")
def server(deployment: Deployment) -> Iterator[GatewayServer]:
    schema = f"test_gw_{uuid.uuid4().hex[:12]}"
    options = GatewaySettings(schema=schema, topics=f"{UPSTREAM},other.topic")
    with GatewayServer(deployment.settings, options) as gateway:
        yield gateway


@pytest.fixture(scope="module")
async def keys(server: GatewayServer, deployment: Deployment) -> AsyncIterator[dict[str, str]]:
    made = {
        "acme": await server.acall(
            server.new_key("acme", "publish", "read", "approve", "admin", name="acme-ops")
        ),
        "reader": await server.acall(server.new_key("acme", "read")),
        "globex": await server.acall(server.new_key("globex", "publish", "read", "approve")),
    }
    yield made
    async with deployment.engine.begin() as connection:
        await connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{server.options.schema}" CASCADE')


@pytest.fixture
async def http(server: GatewayServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def test_start_a_run_and_follow_it_over_http(
    http: httpx.AsyncClient, keys: dict[str, str], deployment: Deployment
) -> None:
    await deployment.client.register(hello("http-hello"))
    since = datetime.now(UTC).isoformat()
    response = await http.post(
        "/v1/runs",
        json={"definition": "http-hello", "input": {"who": "ada"}, "idempotency_key": "k1"},
        headers=auth(keys["acme"]),
    )
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    assert run_id.startswith("acme:")

    query = {"run_id": run_id, "kind": "run", "since": since, "limit": 1}
    results = await _sse(http, "/v1/results", query, keys["acme"])
    assert [(e, d["run_id"], d["status"]) for e, d in results] == [("run", run_id, "completed")]

    async def completed() -> dict[str, Any] | None:
        got = await http.get(f"/v1/runs/{run_id}", headers=auth(keys["acme"]))
        return got.json() if got.status_code == 200 and got.json()["status"] != "running" else None

    run = await eventually(completed, what="the run completed in the read models")
    assert (run["definition"], run["status"], run["input"]) == ("http-hello@1", "completed",
                                                                 {"who": "ada"})  # fmt: skip
    assert [s["step_id"] for s in run["steps"]] == ["greet"]
    events = (await http.get(f"/v1/runs/{run_id}/events", headers=auth(keys["acme"]))).json()
    assert events["source"] in ("index", "scan") and events["complete"]
    assert [e["seq"] for e in events["events"]] == list(range(1, len(events["events"]) + 1))
    assert events["events"][0]["type"] == "RunStarted"
    assert events["events"][-1]["type"] == "RunCompleted"
    listed = (await http.get("/v1/runs?definition=http-hello", headers=auth(keys["acme"]))).json()
    assert [r["run_id"] for r in listed["runs"]] == [run_id]


async def test_result_streams_from_a_point_in_time_and_side_by_side(
    http: httpx.AsyncClient, keys: dict[str, str], deployment: Deployment
) -> None:
    await deployment.client.register(hello("http-sse"))
    key = keys["acme"]

    async def start(who: str) -> str:
        body = {"definition": "http-sse", "input": {"who": who}}
        response = await http.post("/v1/runs", json=body, headers=auth(key))
        run_id: str = response.json()["run_id"]
        return run_id

    early = await start("early")
    await deployment.client.wait([early], timeout_s=30)
    await asyncio.sleep(0.05)  # record timestamps are milliseconds
    point = datetime.now(UTC).isoformat()
    live = {"definition": "http-sse", "kind": "run", "limit": 2}
    ready = [asyncio.Event(), asyncio.Event()]
    streams = [asyncio.create_task(_sse(http, "/v1/results", live, key, r)) for r in ready]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 10)
    late = [await start("late-1"), await start("late-2")]
    await deployment.client.wait(late, timeout_s=30)

    since = {"definition": "http-sse", "kind": "run", "since": point, "idle_timeout": 1.5}
    from_point = await _sse(http, "/v1/results", since, key)
    first, second = await asyncio.gather(*streams)

    for seen in (from_point, first, second):
        assert sorted(data["run_id"] for _, data in seen) == sorted(late)
        assert {kind for kind, _ in seen} == {"run"}


async def test_the_events_of_a_run_not_yet_indexed_are_found_by_a_scan(
    http: httpx.AsyncClient, keys: dict[str, str], deployment: Deployment
) -> None:
    await deployment.client.register(hello("http-scan"))
    run_id = (
        await http.post("/v1/runs", json={"definition": "http-scan", "input": {"who": "x"}},
                        headers=auth(keys["acme"]))
    ).json()["run_id"]  # fmt: skip
    await deployment.client.wait([run_id], timeout_s=30)
    await eventually(lambda: _finished(deployment, run_id), what="the run fully projected")
    schema = deployment.settings.read_model_schema

    async def unindex() -> bool:  # as if the projector had not reached the run yet
        async with deployment.engine.begin() as connection:
            deleted = await connection.execute(
                text(f'DELETE FROM "{schema}".event_index WHERE run_id = :run_id'),
                {"run_id": run_id},
            )
            return deleted.rowcount > 0

    await eventually(unindex, what="the run indexed, then unindexed")
    response = await http.get(f"/v1/runs/{run_id}/events", headers=auth(keys["acme"]))
    body = response.json()
    assert response.status_code == 200, body
    assert body["source"] == "scan" and body["complete"]
    assert body["events"][-1]["type"] == "RunCompleted"


async def test_definitions_over_http(http: httpx.AsyncClient, keys: dict[str, str]) -> None:
    document = definition_to_dict(hello("http-defs"))
    headers = auth(keys["acme"])

    created = await http.post("/v1/definitions", json=document, headers=headers)
    again = await http.post("/v1/definitions", json=document, headers=headers)
    changed = await http.post(
        "/v1/definitions", json={**document, "description": "other"}, headers=headers
    )
    listed = (await http.get("/v1/definitions", headers=headers)).json()
    shown = await http.get("/v1/definitions/http-defs", headers=headers)
    missing = await http.get("/v1/definitions/http-defs?version=9", headers=headers)

    assert (created.status_code, created.json()["key"]) == (201, "http-defs@1")
    assert (again.status_code, again.json()["created"]) == (200, False)
    assert changed.status_code == 409
    assert "version 2" in changed.json()["problems"][0]["message"]
    assert "http-defs@1" in [d["key"] for d in listed["definitions"]]
    assert (shown.status_code, shown.json()) == (200, document)
    assert missing.status_code == 404


async def test_an_invalid_definition_is_a_422_listing_each_problem_with_its_step(
    http: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    document = {
        "name": "broken",
        "version": 1,
        "steps": [
            {"id": "a", "capability": "cl-echo", "depends_on": ["b"]},
            {"id": "b", "capability": "cl-echo", "depends_on": ["a"]},
            {"id": "c", "capability": "cl-echo", "inputs": {"x": "$.steps.nope.output"}},
        ],
    }
    response = await http.post("/v1/definitions", json=document, headers=auth(keys["acme"]))

    body = response.json()
    assert response.status_code == 422, body
    assert body["detail"].startswith("invalid workflow definition")
    steps = {p["step"] for p in body["problems"]}
    assert {"c"} <= steps and steps & {"a", "b"}, body
    assert all(p["message"] for p in body["problems"])
    not_json = await http.post(
        "/v1/definitions", content=b"{nope", headers={**auth(keys["acme"]),
                                                       "content-type": "application/json"}
    )  # fmt: skip
    assert not_json.status_code == 422


async def test_start_refuses_an_unknown_definition_or_a_bad_input(
    http: httpx.AsyncClient, keys: dict[str, str], deployment: Deployment
) -> None:
    await deployment.client.register(hello("http-contract"))
    headers = auth(keys["acme"])

    unknown = await http.post("/v1/runs", json={"definition": "nope"}, headers=headers)
    bad = await http.post(
        "/v1/runs", json={"definition": "http-contract", "input": {"who": 3}}, headers=headers
    )
    nul = await http.post(
        "/v1/runs", json={"definition": "http-contract", "input": {"who": "a\u0000"}},
        headers=headers,
    )  # fmt: skip

    assert unknown.status_code == 422
    assert unknown.json()["problems"][0]["where"] == "body.definition"
    assert bad.status_code == 422
    assert bad.json()["problems"] == [
        {"where": "body.input", "message": "field 'who' should be string, got integer",
         "step": None, "field": None},
    ] or "who" in bad.json()["problems"][0]["message"]  # fmt: skip
    assert nul.status_code == 422 and nul.json()["problems"][0]["where"] == "body.input.who"
    huge = await http.post(
        "/v1/runs", json={"definition": "http-contract", "input": {"who": "x" * 1_100_000}},
        headers=headers,
    )  # fmt: skip
    assert huge.status_code == 413, huge.text
    assert "over the 1,000,000-byte limit (APEX_MAX_RECORD_BYTES)" in huge.json()["detail"]


async def test_approve_from_the_http_inbox(
    http: httpx.AsyncClient, keys: dict[str, str], deployment: Deployment
) -> None:
    await deployment.client.register(gated("http-gated"))
    headers = auth(keys["acme"])
    run_id = (
        await http.post("/v1/runs", json={"definition": "http-gated"}, headers=headers)
    ).json()["run_id"]

    async def in_inbox() -> list[dict[str, Any]]:
        inbox = (await http.get("/v1/approvals?definition=http-gated", headers=headers)).json()
        return [a for a in inbox["approvals"] if a["run_id"] == run_id]

    (entry,) = await eventually(in_inbox, what="the approval in the HTTP inbox")
    assert (entry["step_id"], entry["definition"]) == ("ship", "http-gated@1")
    approved = await http.post(
        f"/v1/runs/{run_id}/steps/ship/approve", json={"comment": "ok"}, headers=headers
    )
    assert approved.status_code == 202, approved.text
    assert (await deployment.client.wait([run_id], timeout_s=30))[run_id].status == "completed"

    async def decided() -> dict[str, Any] | None:
        # The run's end comes in a later transaction than the approval, so the read
        # models may show the approval granted while the run still runs: wait for both
        # (the gateway refuses a cancel only once the read models show the run finished).
        run = (await http.get(f"/v1/runs/{run_id}", headers=headers)).json()
        granted = run["approvals"] and run["approvals"][0]["status"] == "granted"
        return run if granted and run["status"] == "completed" else None

    run = await eventually(decided, what="the approval and the run's end in the read models")
    assert run["approvals"][0]["decided_by"] == "acme-ops"
    twice = await http.post(f"/v1/runs/{run_id}/steps/ship/approve", headers=headers)
    never = await http.post(f"/v1/runs/{run_id}/steps/prepare/reject", headers=headers)
    cancel = await http.post(f"/v1/runs/{run_id}/cancel", headers=headers)
    assert (twice.status_code, never.status_code, cancel.status_code) == (409, 404, 409)


async def test_a_key_without_the_scope_or_of_another_tenant_is_refused(
    http: httpx.AsyncClient, keys: dict[str, str], server: GatewayServer, deployment: Deployment
) -> None:
    await deployment.client.register(gated("http-auth"))
    run_id = (
        await http.post("/v1/runs", json={"definition": "http-auth"}, headers=auth(keys["acme"]))
    ).json()["run_id"]
    reader, other = auth(keys["reader"]), auth(keys["globex"])

    assert (await http.get("/v1/runs")).status_code == 401
    assert (
        await http.get("/v1/runs", headers=auth("apex_0123456789ab_" + "x" * 43))
    ).status_code == 401
    assert (await http.get("/healthz")).status_code == 200
    no_scope = await http.post("/v1/runs", json={"definition": "http-auth"}, headers=reader)
    assert no_scope.status_code == 403 and "'publish'" in no_scope.json()["detail"]
    assert (await http.post("/v1/definitions", json={}, headers=other)).status_code == 403
    assert (
        await http.post(f"/v1/runs/{run_id}/steps/ship/approve", headers=reader)
    ).status_code == 403

    async def visible() -> bool:
        return (await http.get(f"/v1/runs/{run_id}", headers=reader)).status_code == 200

    await eventually(visible, what="the run visible to its tenant")
    assert (await http.get(f"/v1/runs/{run_id}", headers=other)).status_code == 404
    assert (await http.get(f"/v1/runs/{run_id}/events", headers=other)).status_code == 404
    assert (await http.post(f"/v1/runs/{run_id}/cancel", headers=other)).status_code == 404
    assert (await http.post(f"/v1/runs/{run_id}/signals", json={"name": "go"},
                            headers=other)).status_code == 404  # fmt: skip
    assert (await http.post(f"/v1/runs/{run_id}/steps/ship/approve",
                            headers=other)).status_code == 404  # fmt: skip
    assert (await http.get(f"/v1/results?run_id={run_id}", headers=other)).status_code == 404
    theirs = (await http.get("/v1/runs?definition=http-auth", headers=other)).json()
    inbox = (await http.get("/v1/approvals", headers=other)).json()
    assert theirs["runs"] == [] and inbox["approvals"] == []

    key_id = keys["globex"].split("_")[1]
    await server.acall(server.app.state.gateway.keys.revoke(key_id))
    assert (await http.get("/v1/runs", headers=other)).status_code == 401


async def test_business_events_go_only_to_allowed_topics(
    http: httpx.AsyncClient, keys: dict[str, str], kafka_admin: Any, topic_factory: TopicFactory
) -> None:
    from apex.devstack.topics import create_topic, delete_topics

    await create_topic(kafka_admin, UPSTREAM, partitions=1, replication_factor=1)
    try:
        sent = await http.post(
            f"/v1/topics/{UPSTREAM}/events?key=o-1", json={"order": 1}, headers=auth(keys["acme"])
        )
        refused = await http.post(
            "/v1/topics/not.allowed/events", json={"order": 1}, headers=auth(keys["acme"])
        )
        missing = await http.post(
            "/v1/topics/other.topic/events", json={}, headers=auth(keys["acme"])
        )
    finally:
        await delete_topics(kafka_admin, [UPSTREAM])
    assert sent.status_code == 202, sent.text
    assert sent.json()["topic"] == UPSTREAM
    assert refused.status_code == 403 and UPSTREAM in refused.json()["problems"][0]["message"]
    assert missing.status_code == 404


async def _sse(
    http: httpx.AsyncClient,
    url: str,
    params: dict[str, Any],
    key: str,
    subscribed: asyncio.Event | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The events of a stream that ends by itself (give ``limit`` or ``idle_timeout``)."""
    events: list[tuple[str, dict[str, Any]]] = []
    stream = http.stream("GET", url, params=params, headers=auth(key))
    async with asyncio.timeout(30), stream as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = ""
        async for line in response.aiter_lines():
            if line == ": subscribed" and subscribed is not None:
                subscribed.set()
            elif line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    return events


async def _finished(deployment: Deployment, run_id: str) -> bool:
    run = await deployment.client.get_run(run_id)
    return run is not None and run.finished
