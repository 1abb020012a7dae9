"""The ``apex`` command line against the real stack, through its --json output.

Commands run in a worker thread (each makes its own event loop with
``asyncio.run``, as from a shell) while the deployment's runtime and projector
go on in the test's loop; the environment carries the deployment's settings.
One test runs the real ``apex`` entry point in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from apex.cli import app
from apex.definition_files import dump_definition
from tests.conftest import TopicFactory
from tests.integration.deployment import (
    Deployment,
    deployment,
    eventually,
    gated,
    hello,
    signalled,
)

__all__ = ["deployment"]


class Apex:
    """``await apex("runs", "get", run_id)`` -> (exit code, stdout, stderr)."""

    def __init__(self, deployment: Deployment) -> None:
        self.env = deployment.settings.to_env()

    async def __call__(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        def invoke() -> tuple[int, str, str]:
            result = CliRunner().invoke(app, list(args), env=self.env, input=stdin)
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                raise result.exception
            return result.exit_code, result.stdout, result.stderr

        return await asyncio.to_thread(invoke)

    async def json(self, *args: str) -> Any:
        code, out, err = await self(*args, "--json")
        assert code == 0, f"apex {' '.join(args)} --json: exit {code}\n{out}\n{err}"
        return json.loads(out)


async def test_register_start_wait_get_list_and_watch(
    deployment: Deployment, tmp_path: Path
) -> None:
    apex = Apex(deployment)
    flow = tmp_path / "flow.yaml"
    flow.write_text(dump_definition(hello("cli-hello")))

    registered = await apex.json("definitions", "register", str(flow))
    listed = await apex.json("definitions", "list")
    shown = await apex.json("definitions", "show", "cli-hello")
    started = await apex.json("runs", "start", "cli-hello", "-i", '{"who": "ada"}', "--wait")
    run_id = started["run_id"]

    assert registered == {"registered": ["cli-hello@1"]}
    assert "cli-hello@1" in [d["key"] for d in listed]
    assert shown["steps"][0]["id"] == "greet"
    assert (started["status"], started["outputs"]["greet"]["echo"]) == ("completed", {"who": "ada"})
    code, out, _ = await apex("runs", "watch", run_id, "--json", "--timeout", "20")
    assert code == 0 and json.loads(out.splitlines()[-1])["status"] == "completed"
    run = await apex.json("runs", "get", run_id)
    assert [(s["step_id"], s["status"]) for s in run["steps"]] == [("greet", "succeeded")]
    page = await apex.json("runs", "list", "--definition", "cli-hello", "--status", "completed")
    assert [r["run_id"] for r in page["runs"]] == [run_id]

    for args, shows in (
        (("runs", "get", run_id), "succeeded"),
        (("runs", "list", "-d", "cli-hello"), "cli-hello@1"),
        (("runs", "watch", run_id), "completed"),
        (("definitions", "list"), "cli-hello"),
        (("definitions", "show", "cli-hello"), "greet"),
        (("approvals", "list", "-d", "cli-hello"), "Nothing waits"),
        (("subscribe", "-d", "cli-hello", "--since", "1h", "-n", "1"), run_id[:8]),
    ):
        code, out, err = await apex(*args)
        assert code == 0 and shows in out, f"apex {' '.join(args)}: {code}\n{out}\n{err}"


async def test_approve_from_the_cli_inbox(deployment: Deployment, tmp_path: Path) -> None:
    apex = Apex(deployment)
    await deployment.client.register(gated("cli-gated"))
    run_id = (await apex.json("runs", "start", "cli-gated"))["run_id"]

    async def waiting() -> list[Any]:
        inbox = await apex.json("approvals", "list", "--definition", "cli-gated")
        return [a for a in inbox if a["run_id"] == run_id]

    (entry,) = await eventually(waiting, what="the approval in `apex approvals list`")
    assert entry["step_id"] == "ship"
    decided = await apex.json("approvals", "approve", run_id, "ship", "--as", "lin")
    assert decided["command"] == "ApproveStep"
    code, out, _ = await apex("runs", "watch", run_id, "--json", "--timeout", "20")
    assert code == 0, out
    assert json.loads(out.splitlines()[-1])["approvals"][0]["decided_by"] == "lin"
    code, _, err = await apex("approvals", "reject", run_id, "ship")
    assert code == 1 and "granted by lin already" in err


async def test_signal_wakes_a_waiting_run(deployment: Deployment) -> None:
    apex = Apex(deployment)
    await deployment.client.register(signalled("cli-signal"))
    run_id = (await apex.json("runs", "start", "cli-signal"))["run_id"]

    sent = await apex.json("signal", run_id, "go", "--payload", '{"n": 1}')
    result = (await deployment.client.wait([run_id], timeout_s=30))[run_id]

    assert sent["command"] == "SendSignal"
    assert result.status == "completed"


async def test_publish_and_subscribe_from_a_point_in_time(
    deployment: Deployment, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    apex = Apex(deployment)
    topic = await topic_factory("cli.orders")
    events = tmp_path / "orders.jsonl"
    events.write_text('{"order": 1}\n{"order": 2}\n')
    published = await apex("publish", topic, str(events), "--lines", "--key", "o", "--json")
    assert published[0] == 0, published
    assert [json.loads(line)["offset"] for line in published[1].splitlines()] == [0, 1]

    await deployment.client.register(hello("cli-sub"))
    early = await deployment.client.start_run("cli-sub", {"who": "early"})
    await deployment.client.wait([early], timeout_s=30)
    await asyncio.sleep(0.05)
    point = datetime.now(UTC).isoformat()
    late = [await deployment.client.start_run("cli-sub", {"who": str(i)}) for i in range(2)]
    await deployment.client.wait(late, timeout_s=30)

    code, out, err = await apex(
        "subscribe", "--definition", "cli-sub", "--kind", "run", "--since", point,
        "--idle-timeout", "1.5", "--json",
    )  # fmt: skip
    assert code == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["run_id"] for r in got) == sorted(late)
    assert {r["type"] for r in got} == {"run"}


async def test_errors_say_what_was_wrong_and_exit_non_zero(deployment: Deployment) -> None:
    apex = Apex(deployment)

    missing = await apex("runs", "get", "no-such-run")
    own_topic = await apex("publish", deployment.settings.topic("commands"), "-", stdin="{}")
    bad_json = await apex("runs", "start", "x", "--input", "{nope")
    bad_time = await apex("subscribe", "--since", "yesterday-ish", "--limit", "1")

    assert missing[0] == 1 and "not in the read models" in missing[2]
    assert own_topic[0] == 1 and "one of Apex's own topics" in own_topic[2]
    assert bad_json[0] == 2 and "not JSON" in bad_json[2]
    assert bad_time[0] == 2 and "ISO 8601" in bad_time[2]


def test_apex_help_reads_like_a_manual() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "apex", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("definitions", "runs", "approvals", "signal", "publish", "subscribe",
                    "gateway"):  # fmt: skip
        assert command in out
    assert "A first session" in out and "--json" in out
