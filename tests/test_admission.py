"""Admission into the decoder's slots: fair round robin, caps, the same-model rule; no model needed."""

from __future__ import annotations

import pytest

from generation.admission import Candidate, FairQueue, QueueLimits, submit_refusal


def job(job_id: str, user: str, rows: int = 1, model: str = "m") -> Candidate:
    return Candidate(job_id=job_id, user_id=user, model=model, rows=rows)


def ids(candidates) -> list[str]:
    return [c.job_id for c in candidates]


def test_order_is_round_robin_across_users():
    queue = FairQueue([job("a1", "a"), job("a2", "a"), job("a3", "a"), job("b1", "b"), job("c1", "c"), job("b2", "b")])
    assert ids(queue.order()) == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert queue.position("b2") == 5
    assert queue.position("zz") is None


def test_admits_in_fair_order_while_slots_are_free():
    queue = FairQueue([job("a1", "a"), job("a2", "a"), job("b1", "b")])
    assert ids(queue.admit(free_slots=2, limits=QueueLimits(max_rows=8))) == ["a1", "b1"]
    assert ids(queue.order()) == ["a2"]
    assert ids(queue.admit(free_slots=1, limits=QueueLimits(max_rows=8))) == ["a2"]
    assert len(queue) == 0


def test_a_user_admitted_goes_to_the_back_of_the_rotation():
    queue = FairQueue([job("a1", "a"), job("a2", "a"), job("b1", "b"), job("b2", "b")])
    assert ids(queue.admit(free_slots=1)) == ["a1"]
    queue.add(job("c1", "c"))
    # b has waited longest for a turn, then a; a newcomer joins the rotation at its end (as in the scheduler)
    assert ids(queue.order()) == ["b1", "a2", "c1", "b2"]


def test_global_cap_counts_running_rows():
    queue = FairQueue([job("a1", "a"), job("b1", "b")])
    running = [job("x", "x", rows=3)]
    assert ids(queue.admit(free_slots=8, running=running, limits=QueueLimits(max_rows=4))) == ["a1"]
    assert ids(queue.order()) == ["b1"]


def test_a_job_that_does_not_fit_is_not_overtaken():
    queue = FairQueue([job("a1", "a", rows=3), job("b1", "b", rows=1)])
    assert queue.admit(free_slots=2, limits=QueueLimits(max_rows=8)) == []
    assert ids(queue.admit(free_slots=4, limits=QueueLimits(max_rows=8))) == ["a1", "b1"]


def test_same_model_is_the_only_compatibility_rule():
    queue = FairQueue([job("a1", "a", model="small"), job("b1", "b", model="large"), job("c1", "c", model="small")])
    running = [job("r", "r", model="small")]
    # b1 needs another model: it waits for the running job to drain, and c1 behind it waits too
    assert ids(queue.admit(free_slots=4, running=running, limits=QueueLimits(max_rows=8))) == ["a1"]
    assert queue.admit(free_slots=4, running=running, limits=QueueLimits(max_rows=8)) == []
    # nothing runs: the head picks the model, then only jobs of that model join
    assert ids(queue.admit(free_slots=4, limits=QueueLimits(max_rows=8))) == ["b1"]
    assert ids(queue.admit(free_slots=4, limits=QueueLimits(max_rows=8), model="small")) == ["c1"]


def test_different_sampling_and_kinds_share_slots():
    # admission knows nothing of sampling, prompts or durations: only the model and the rows
    queue = FairQueue([job("a1", "a", rows=2), job("b1", "b", rows=2)])
    assert ids(queue.admit(free_slots=4, limits=QueueLimits(max_rows=4))) == ["a1", "b1"]


def test_remove_a_cancelled_job():
    queue = FairQueue([job("a1", "a"), job("b1", "b")])
    assert queue.remove("a1").job_id == "a1"
    assert queue.remove("a1") is None
    assert ids(queue.order()) == ["b1"]
    assert queue.pending_for("a") == 0 and queue.pending_for("b") == 1


def test_submit_refusals():
    limits = QueueLimits(per_user_pending=2, max_depth=3)
    assert submit_refusal(user_pending=1, depth=2, limits=limits) is None
    assert "limit is 2" in submit_refusal(user_pending=2, depth=0, limits=limits)
    assert "queue is full" in submit_refusal(user_pending=0, depth=3, limits=limits)


def test_a_job_needs_a_slot():
    with pytest.raises(ValueError):
        FairQueue([job("a1", "a", rows=0)])
