"""The worker SDK without Kafka: @agent signatures, error classification, loading targets."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apex.config import Settings
from apex.domain.messages import TaskDispatch
from apex.worker import Agent, FatalError, RetryableError, TaskContext, Worker, agent
from apex.worker.agent import takes_context
from apex.worker.errors import MAX_ERROR_CHARS, describe, is_retryable
from apex.worker.runner import LoadError, as_worker, load_target, load_worker

SETTINGS = Settings(topic_prefix="unit.")


# -- @agent and signatures ------------------------------------------------------------------


def test_agent_with_context_receives_it() -> None:
    @agent("summarize")
    async def summarize(input: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {"text": input["text"], "run": ctx.run_id, "attempt": ctx.attempt}

    ctx = TaskContext.from_dispatch(_dispatch("summarize"))
    assert summarize.takes_context
    assert asyncio.run(summarize.invoke({"text": "hi"}, ctx)) == {
        "text": "hi",
        "run": "run-1",
        "attempt": 1,
    }


def test_agent_without_context_is_called_with_the_input_only() -> None:
    @agent("echo")
    async def echo(input: Any) -> Any:
        return input

    assert not echo.takes_context
    assert asyncio.run(echo.invoke([1, 2], TaskContext.from_dispatch(_dispatch("echo")))) == [1, 2]


def test_decorated_agent_stays_callable_and_keeps_its_name() -> None:
    @agent("echo", concurrency=3, heartbeat_s=2.5)
    async def echo(input: Any) -> Any:
        """Returns its input."""
        return input

    assert isinstance(echo, Agent)
    assert (echo.capability, echo.concurrency, echo.heartbeat_s) == ("echo", 3, 2.5)
    assert vars(echo)["__name__"] == "echo"
    assert echo.__doc__ == "Returns its input."
    assert asyncio.run(echo("x")) == "x"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("async def f(input): ...", False),
        ("async def f(input, ctx): ...", True),
        ("async def f(input, ctx=None): ...", True),
        ("async def f(input, *, verbose=False): ...", False),
        ("async def f(*args): ...", True),
        ("async def f(self_input, /, ctx): ...", True),
    ],
)
def test_signature_decides_whether_the_context_is_passed(source: str, expected: bool) -> None:
    assert takes_context(_function(source), "x") is expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def f(input): ...", "must be an `async def`"),
        ("async def f(): ...", "takes no parameters"),
        ("async def f(a, b, c): ...", "requires 3 positional parameters"),
        ("async def f(input, *, token): ...", "keyword-only parameters without defaults"),
    ],
)
def test_signature_that_fits_no_form_is_refused_with_the_reason(source: str, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        agent("x")(_function(source))


@pytest.mark.parametrize("capability", ["", "has space", "slash/y", "-leading"])
def test_capability_that_cannot_name_a_topic_is_refused(capability: str) -> None:
    with pytest.raises(ValueError, match="cannot name a topic"):
        agent(capability)


def test_concurrency_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        agent("x", concurrency=0)


def test_context_heartbeat_without_a_worker_does_nothing() -> None:
    ctx = TaskContext.from_dispatch(_dispatch("x"))
    asyncio.run(ctx.heartbeat())
    assert not ctx.cancelled.is_set()
    assert ctx.task_ref == "run-1/step-1#1"


# -- error classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (FatalError("bad ticket"), False),
        (ValueError("no field 'text'"), False),
        (TypeError("unsupported operand"), False),
        (json.JSONDecodeError("Expecting value", "", 0), False),
        (RetryableError("rate limited"), True),
        (RuntimeError("flaky"), True),
        (KeyError("cache miss"), True),
        (TimeoutError("upstream slow"), True),
        (ConnectionResetError("peer reset"), True),
    ],
)
def test_default_classification(error: Exception, retryable: bool) -> None:
    assert is_retryable(error) is retryable


def test_explicit_error_classes_win_over_the_list() -> None:
    class QuotaExceeded(RetryableError, ValueError):
        pass

    class Refused(FatalError, ConnectionError):
        pass

    assert is_retryable(QuotaExceeded("try later"))
    assert not is_retryable(Refused("forbidden"))


def test_non_retryable_list_is_configurable() -> None:
    class PolicyViolation(Exception):
        pass

    assert is_retryable(PolicyViolation())
    assert not is_retryable(PolicyViolation(), (PolicyViolation,))
    assert is_retryable(ValueError("retry me anyway"), ())


def test_error_text_names_the_type_and_message_and_is_bounded() -> None:
    assert describe(ValueError("no field 'text'")) == "ValueError: no field 'text'"
    assert describe(FatalError()) == "FatalError"
    long = describe(RuntimeError("x" * 10_000))
    assert long.startswith("RuntimeError: xxx")
    assert len(long) == MAX_ERROR_CHARS


# -- loading module:object ----------------------------------------------------------------------

AGENTS_SOURCE = """
from apex.worker import Worker, agent

@agent("alpha")
async def alpha(input):
    return input

@agent("beta", concurrency=2)
async def beta(input, ctx):
    return input

agents = [alpha, beta]
not_agents = [alpha, "beta"]
number = 42

def make_worker(settings):
    return Worker(settings, [alpha], worker_id="from-factory")

def make_agents():
    return [beta]

async def async_factory():
    return [alpha]

class Namespace:
    both = (alpha, beta)
"""


@pytest.fixture
def sample_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable module (unique name) holding agents in every supported form."""
    name = f"sample_agents_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(AGENTS_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_module_alone_runs_every_agent_in_it(sample_module: str) -> None:
    worker = load_worker(sample_module, SETTINGS)
    assert sorted(worker.agents) == ["alpha", "beta"]


def test_list_of_agents(sample_module: str) -> None:
    worker = load_worker(f"{sample_module}:agents", SETTINGS)
    assert sorted(worker.agents) == ["alpha", "beta"]
    assert worker.settings is SETTINGS


def test_single_agent(sample_module: str) -> None:
    assert list(load_worker(f"{sample_module}:beta", SETTINGS).agents) == ["beta"]


def test_dotted_attribute_path(sample_module: str) -> None:
    worker = load_worker(f"{sample_module}:Namespace.both", SETTINGS)
    assert sorted(worker.agents) == ["alpha", "beta"]


def test_factory_taking_settings_returns_a_worker(sample_module: str) -> None:
    worker = load_worker(f"{sample_module}:make_worker", SETTINGS)
    assert worker.worker_id == "from-factory"
    assert list(worker.agents) == ["alpha"]


def test_factory_without_parameters_may_return_agents(sample_module: str) -> None:
    assert list(load_worker(f"{sample_module}:make_agents", SETTINGS).agents) == ["beta"]


def test_command_line_overrides_apply_to_the_loaded_worker(sample_module: str) -> None:
    worker = load_worker(f"{sample_module}:make_worker", SETTINGS, concurrency=5, grace_s=1.5)
    assert (worker.concurrency, worker.grace_s) == (5, 1.5)


def test_grace_defaults_to_the_setting(sample_module: str) -> None:
    settings = Settings(worker_grace_s=7.0)
    assert load_worker(f"{sample_module}:agents", settings).grace_s == 7.0


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        (":missing", "has no attribute 'missing'"),
        (":number", "is a int: expected a Worker"),
        (":not_agents", "every item must be an @agent function"),
        (":async_factory", "must be a plain function"),
        (":", "expected 'module:object' or 'module'"),
    ],
)
def test_bad_target_says_what_is_wrong(sample_module: str, suffix: str, message: str) -> None:
    with pytest.raises(LoadError, match=message):
        load_worker(f"{sample_module}{suffix}", SETTINGS)


def test_unknown_module_says_where_it_was_looked_for() -> None:
    with pytest.raises(LoadError, match="no module named 'no_such_module_xyz'"):
        load_target("no_such_module_xyz:agents")


def test_module_without_agents_is_refused() -> None:
    with pytest.raises(LoadError, match="holds no @agent functions"):
        as_worker(json, SETTINGS, "json")


def test_two_agents_for_one_capability_are_refused() -> None:
    @agent("same")
    async def first(input: Any) -> Any:
        return input

    @agent("same")
    async def second(input: Any) -> Any:
        return input

    with pytest.raises(ValueError, match="two agents for capability 'same'"):
        Worker(SETTINGS, [first, second])


def test_worker_groups_and_ids() -> None:
    @agent("summarize")
    async def summarize(input: Any) -> Any:
        return input

    worker = Worker(SETTINGS, [summarize], worker_id="w1")
    assert worker.group_of("summarize") == "unit.workers.summarize"
    assert worker.worker_id == "w1"
    assert Worker(Settings(instance_id="box-7"), [summarize]).worker_id == "box-7"


# -- helpers ------------------------------------------------------------------------------------


def _function(source: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    return namespace["f"]


def _dispatch(capability: str) -> TaskDispatch:
    return TaskDispatch(
        run_id="run-1",
        step_id="step-1",
        attempt=1,
        capability=capability,
        input={},
        timeout_ms=None,
        dispatched_at_ms=0,
        definition="triage@1",
        correlation_id="corr-1",
    )
