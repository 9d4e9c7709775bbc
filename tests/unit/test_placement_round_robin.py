"""Round-robin placement: the same choices as filtering every candidate first and rotating over the
ones that fit, while checking only the candidates up to the chosen one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.core import placement
from orchestrator.core.model import Proplet, PropletMetadata, Task
from orchestrator.core.validation import build_task


class FilterThenRotate:
    """The reference: every candidate checked, the fitting ones sorted by id, the next after the last."""

    def __init__(self) -> None:
        self.last = ""

    def choose(self, task: Task, candidates: Sequence[Proplet], reserved: Mapping[str, int]) -> Any:
        ok, reason = placement.eligible(task, candidates, reserved)
        if not ok:
            return None, reason
        ordered = sorted(ok, key=lambda p: p.id)
        chosen = next((p for p in ordered if p.id > self.last), ordered[0])
        self.last = chosen.id
        return chosen.id, ""


def proplet(pid: str, busy: bool, tags: list[str]) -> Proplet:
    return Proplet(pid, alive=True, task_count=1 if busy else 0,
                   metadata=PropletMetadata(max_instances=1, tags=tags))  # fmt: skip


fleets = st.lists(
    st.builds(
        proplet, st.sampled_from("abcdefghij"), st.booleans(), st.lists(st.sampled_from(["eu", "gpu"]))
    ),
    max_size=8,
    unique_by=lambda p: p.id,
)
tasks = st.sampled_from([{}, {"metadata": {"requires": {"tags": ["eu"]}}}]).map(
    lambda spec: build_task({"name": "add", **spec}, lambda: "t-1")
)


@given(st.lists(st.tuples(tasks, fleets), max_size=12))
def test_chooses_as_filtering_every_candidate_first(rounds: list[tuple[Task, list[Proplet]]]) -> None:
    policy, reference = placement.RoundRobin(), FilterThenRotate()
    for task, fleet in rounds:
        choice = policy.choose(task, fleet, {})
        chosen = choice.proplet.id if choice.proplet is not None else None
        assert (chosen, choice.reason) == reference.choose(task, fleet, {})


def test_checks_only_the_candidates_up_to_the_chosen_one(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = [proplet(f"p{i:02d}", busy=False, tags=[]) for i in range(50)]
    checked: list[str] = []
    fits = placement.fits

    def counted(task: Task, p: Proplet, reserved: Mapping[str, int] | None = None) -> str:
        checked.append(p.id)
        return fits(task, p, reserved)

    monkeypatch.setattr(placement, "fits", counted)
    policy = placement.RoundRobin()
    task = build_task({"name": "add"}, lambda: "t-1")
    picks = [policy.choose(task, fleet, {}).proplet for _ in range(51)]
    assert [p.id for p in picks if p is not None] == [f"p{i:02d}" for i in range(50)] + ["p00"]
    assert len(checked) == 51  # one check per choice, not fifty
