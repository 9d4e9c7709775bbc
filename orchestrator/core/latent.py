"""Latent tasks: deployed once, then invoked many times, each answer correlated by invocation_id.

Part of the engine (sans-I/O). An invocation waits at most ``invoke_timeout``; "has not been
precompiled" (the proplet lost its deployment) redeploys once and retries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from orchestrator import wire
from orchestrator.core import result_trust
from orchestrator.core.commands import InvocationFinished, Publish
from orchestrator.core.errors import Conflict, ValidationError
from orchestrator.core.model import Task, TaskState
from orchestrator.core.validation import build_task, printable

if TYPE_CHECKING:
    from orchestrator.core.engine import Engine


class Latent:
    def __init__(self, engine: Engine) -> None:
        self.e = engine
        # invocation_id -> (task_id, deadline, retried, inputs, env)
        self._invocations: dict[str, tuple[str, float, bool, tuple[str, ...], dict[str, str]]] = {}

    def deadlines(self) -> Iterator[float]:
        return (entry[1] for entry in self._invocations.values())

    def expire(self, now: float) -> None:
        for invocation_id, (task_id, deadline, *_rest) in list(self._invocations.items()):
            if now >= deadline:
                del self._invocations[invocation_id]
                timeout = self.e.config.invoke_timeout
                self.e._emit(
                    InvocationFinished(
                        invocation_id, task_id, "", f"invocation timed out after {timeout:g} s"
                    )
                )

    def invoke(self, task_id: str, inputs: Any, env: Any, now: float) -> str:
        """Call a deployed latent task; the answer comes back as an InvocationFinished command."""
        task = self.e.get_task(task_id)
        if not task.latent:
            raise ValidationError(f"task {task_id} is not a latent task and cannot be invoked")
        if task.state is not TaskState.RUNNING or not task.proplet_id:
            raise Conflict(
                f"latent task {task_id} is not deployed (state {task.state.label}); start it first"
            )
        probe = build_task({"name": "invoke", "inputs": inputs, "env": env}, self.e._new_id)
        invocation_id = self.e._new_id()
        self._invocations[invocation_id] = (
            task_id,
            now + self.e.config.invoke_timeout,
            False,
            tuple(probe.inputs),
            dict(probe.env),
        )
        self._publish_invoke(task, invocation_id, tuple(probe.inputs), dict(probe.env))
        return invocation_id

    def _publish_invoke(
        self, task: Task, invocation_id: str, inputs: tuple[str, ...], env: dict[str, str]
    ) -> None:
        message = wire.InvokeTask(task.id, invocation_id, inputs, env, task.proplet_id, False)
        self.e._emit(Publish(self.e.topics.invoke, wire.encode(message), self.e.config.qos))

    def on_result(self, msg: wire.InvokeResult, now: float, wall: float) -> None:
        entry = self._invocations.get(msg.invocation_id)
        if entry is None:
            self.e.counters["invoke_results_ignored"] += 1
            return
        task_id, _deadline, retried, inputs, env = entry
        task = self.e.tasks.get(task_id)
        verified = False
        if task is not None:  # who may answer: the same sender and receipt rules as for results
            proplet = self.e.proplets.get(task.proplet_id)
            verdict = result_trust.judge_invocation(task, msg, proplet, self.e.keys, inputs)
            if not verdict.accepted:
                self.e._reject_result(task, msg, verdict)
                return
            verified = verdict.verified
        if msg.error and "has not been precompiled" in msg.error and not retried and task is not None:
            # The proplet lost its deployment (restart): deploy again and retry once.
            self._invocations[msg.invocation_id] = (
                task_id,
                now + self.e.config.invoke_timeout,
                True,
                inputs,
                env,
            )
            start = self.e._start_message(task, proplet_id=task.proplet_id, broadcast=False)
            self.e._emit(Publish(self.e.topics.start, wire.encode(start), self.e.config.qos))
            self._publish_invoke(task, msg.invocation_id, inputs, env)
            self.e._log("latent_redeployed", task_id=task_id, proplet_id=task.proplet_id)
            return
        del self._invocations[msg.invocation_id]
        self.e._emit(
            InvocationFinished(msg.invocation_id, task_id, msg.results, printable(msg.error or ""), verified)
        )
