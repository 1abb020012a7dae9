"""How services run (apex.service): the event loop APEX_EVENT_LOOP names, the GC policy."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
import uvloop

from apex import gcpolicy, service
from apex.config import Settings


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield None
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restore_gc")
def test_a_service_runs_on_uvloop_by_default_with_the_services_gc_policy() -> None:
    settings = Settings.from_env({})
    assert settings.event_loop == "uvloop"
    assert service.run(_loop_type(), settings) is uvloop.Loop
    assert gc.get_threshold() == gcpolicy.SERVICE_THRESHOLDS


@pytest.mark.usefixtures("restore_gc")
def test_apex_event_loop_asyncio_runs_on_the_standard_loop() -> None:
    settings = Settings.from_env({"APEX_EVENT_LOOP": "asyncio"})
    loop_type = service.run(_loop_type(), settings)
    assert loop_type is not uvloop.Loop
    assert issubclass(loop_type, asyncio.BaseEventLoop)


def test_an_unknown_event_loop_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="APEX_EVENT_LOOP='tokio': use one of uvloop, asyncio"):
        service.loop_factory("tokio")
