"""The worker SDK: write agents, run them with a :class:`Worker`.

    from apex.worker import TaskContext, Worker, agent

    @agent("summarize")
    async def summarize(input: dict, ctx: TaskContext) -> dict:
        return {"summary": input["text"][:100]}

    await Worker(Settings.from_env(), agents=[summarize]).run()

or, from a shell: ``apex worker my_module:summarize``.
"""

from apex.worker.agent import Agent, agent
from apex.worker.context import TaskContext
from apex.worker.errors import FatalError, RetryableError
from apex.worker.worker import Worker, WorkerError

__all__ = [
    "Agent",
    "FatalError",
    "RetryableError",
    "TaskContext",
    "Worker",
    "WorkerError",
    "agent",
]
