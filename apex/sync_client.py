"""A blocking client for scripts and notebooks, over :class:`~apex.client.ApexClient`.

    with SyncApexClient() as apex:
        run_id = apex.start_run("triage", {"text": "printer on fire"})
        print(apex.wait([run_id])[run_id].status)
        for result in apex.subscribe(definition="triage", idle_timeout_s=5):
            print(result)

**How it runs:** each ``SyncApexClient`` owns one private event loop in a
daemon thread, started by ``start()``/``with`` and stopped by ``close()``. The
async client lives on that loop for the client's whole life (its Kafka
connections are made once, not per call); every method submits a coroutine to
it and blocks the calling thread until it is done. So it works where an event
loop is already running (Jupyter), may be called from several threads at once,
and must not be called from a coroutine running on its own loop (it would wait
for itself: that raises ``RuntimeError``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Iterator
from concurrent.futures import Future
from datetime import datetime
from typing import Any, TypeVar

from apex.client import ApexClient, Published
from apex.config import Settings
from apex.domain.definitions import WorkflowDefinition
from apex.domain.messages import RunResult
from apex.queries import PendingApproval, RunInfo, RunPage
from apex.subscription import Result, ResultKind, Subscription

__all__ = ["SyncApexClient"]

T = TypeVar("T")


class SyncApexClient:
    """Blocking twin of :class:`ApexClient`; ``with SyncApexClient(settings) as apex: ...``"""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: ApexClient | None = None

    def __enter__(self) -> SyncApexClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="apex-sync-client", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        client = ApexClient(self.settings)
        try:
            self._run(client.start())
        except BaseException:
            self._stop_loop()
            raise
        self._client = client

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            if self._client is not None:
                self._run(self._client.stop())
        finally:
            self._client = None
            self._stop_loop()

    # -- the async client's operations, blocking ------------------------------------------------

    def register(self, definition: WorkflowDefinition) -> str:
        return self._run(self._async.register(definition))

    def definitions(self) -> list[WorkflowDefinition]:
        return self._run(self._async.definitions())

    def get_definition(self, name: str, version: int | None = None) -> WorkflowDefinition | None:
        return self._run(self._async.get_definition(name, version))

    def start_run(
        self,
        definition: str,
        input: Any = None,
        *,
        version: int | None = None,
        idempotency_key: str = "",
        run_id: str | None = None,
        correlation_id: str = "",
    ) -> str:
        return self._run(
            self._async.start_run(
                definition,
                input,
                version=version,
                idempotency_key=idempotency_key,
                run_id=run_id,
                correlation_id=correlation_id,
            )
        )

    def approve(self, run_id: str, step_id: str, approver: str = "", comment: str = "") -> str:
        return self._run(self._async.approve(run_id, step_id, approver, comment))

    def reject(self, run_id: str, step_id: str, approver: str = "", reason: str = "") -> str:
        return self._run(self._async.reject(run_id, step_id, approver, reason))

    def signal(
        self, run_id: str, name: str, payload: Any = None, correlation_key: str | None = None
    ) -> str:
        return self._run(self._async.signal(run_id, name, payload, correlation_key))

    def cancel(self, run_id: str, reason: str = "") -> str:
        return self._run(self._async.cancel(run_id, reason))

    def publish(self, topic: str, event: Any, key: str | bytes | None = None) -> Published:
        return self._run(self._async.publish(topic, event, key))

    def get_run(self, run_id: str) -> RunInfo | None:
        return self._run(self._async.get_run(run_id))

    def list_runs(
        self,
        *,
        definition: str | None = None,
        status: str | Iterable[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        return self._run(
            self._async.list_runs(
                definition=definition,
                status=status,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        )

    def pending_approvals(
        self, *, definition: str | None = None, limit: int = 100
    ) -> list[PendingApproval]:
        return self._run(self._async.pending_approvals(definition=definition, limit=limit))

    def wait(self, run_ids: Iterable[str], timeout_s: float = 60.0) -> dict[str, RunResult]:
        return self._run(self._async.wait(list(run_ids), timeout_s))

    def subscribe(
        self,
        *,
        definition: str | None = None,
        run_id: str | None = None,
        status: str | Iterable[str] | None = None,
        kind: ResultKind = "any",
        from_time: datetime | None = None,
        idle_timeout_s: float | None = None,
        limit: int | None = None,
    ) -> Iterator[Result]:
        """Results as a blocking iterator; the subscription starts (and "now" is fixed) here.

        Stop early with ``break`` or ``close()`` on the iterator: the reader is closed either way.
        """
        subscription = self._async.subscribe(
            definition=definition,
            run_id=run_id,
            status=status,
            kind=kind,
            from_time=from_time,
            idle_timeout_s=idle_timeout_s,
            limit=limit,
        )
        self._run(subscription.start())
        return self._iterate(subscription)

    # -- helpers ---------------------------------------------------------------------------------

    def _iterate(self, subscription: Subscription) -> Iterator[Result]:
        try:
            while True:
                try:
                    yield self._run(subscription.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if self._loop is not None:
                self._run(subscription.close())

    @property
    def _async(self) -> ApexClient:
        if self._client is None:
            raise RuntimeError("SyncApexClient is not started: use 'with SyncApexClient(...)'")
        return self._client

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coroutine.close()
            raise RuntimeError("SyncApexClient is not started: use 'with SyncApexClient(...)'")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coroutine.close()
            raise RuntimeError(
                "SyncApexClient called from its own event loop: use ApexClient in async code"
            )
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, loop)
        return future.result()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        loop.close()
