"""The lease decisions: acquire, renew, and stop trusting the lease before anyone else can take it."""

from __future__ import annotations

import pytest

from orchestrator.core.lease import Action, LeaseConfig, LeaseCore, Role

TTL = 5.0


def leader(now: float = 0.0, epoch: int = 7) -> LeaseCore:
    core = LeaseCore(LeaseConfig(TTL))
    assert core.due(now) is Action.ACQUIRE
    core.sent(now)
    core.granted(epoch, now + 0.1)
    return core


def test_a_standby_acquires_at_once_and_polls_while_refused() -> None:
    core = LeaseCore(LeaseConfig(TTL))
    assert core.due(0.0) is Action.ACQUIRE and not core.is_leader(0.0)
    core.sent(0.0)
    assert core.due(0.1) is None  # one statement at a time
    core.refused(0.2)
    assert core.role is Role.STANDBY and core.due(0.3) is None
    # Every poll counted from when the attempt was sent: a slow statement does not stretch the period.
    assert core.next_deadline() == pytest.approx(core.config.poll)
    assert core.due(core.config.poll) is Action.ACQUIRE


def test_a_standby_tries_again_when_the_lease_it_saw_expires_not_a_poll_later() -> None:
    core = LeaseCore(LeaseConfig(TTL))
    core.sent(10.0)
    core.refused(10.05, expires_in=3.0)  # far off: poll meanwhile (a clean stop may release it early)
    assert core.next_deadline() == pytest.approx(10.0 + core.config.poll)
    core.sent(12.0)
    core.refused(12.05, expires_in=0.2)  # expires before the next poll: try right then
    assert core.next_deadline() == pytest.approx(12.2)
    assert core.due(12.19) is None and core.due(12.2) is Action.ACQUIRE
    # The estimate counts from when the statement was sent, so it can be early by a round trip; the
    # refusal then says what is left, and the standby tries again after at least ``retry_gap``.
    core.sent(12.2)
    core.refused(12.25, expires_in=0.0)
    assert core.next_deadline() == pytest.approx(12.25 + core.config.retry_gap)
    core.sent(12.26)
    core.granted(2, 12.27)
    assert core.role is Role.LEADER and core.is_leader(12.27)


def test_validity_counts_from_when_the_statement_was_sent_minus_the_margin() -> None:
    core = leader(now=10.0)
    # Granted by a statement sent at 10.0: the database keeps it until >= 10.0 + TTL; we trust it less.
    assert core.is_leader(10.0 + TTL - core.config.margin - 0.01)
    assert not core.is_leader(10.0 + TTL - core.config.margin)
    assert core.due(10.0 + core.config.renew_every) is Action.RENEW


def test_renewals_extend_it_and_failed_ones_retry_until_it_runs_out() -> None:
    core = leader()
    t = core.config.renew_every
    core.sent(t)
    core.granted(7, t + 0.5)
    assert core.is_leader(t + TTL - core.config.margin - 0.01)
    # The database goes away: renewals fail, the core retries, then steps down in time.
    now = 2 * t
    while core.due(now) is not Action.STEP_DOWN:
        if core.due(now) is Action.RENEW:
            core.sent(now)
            core.failed(now + 0.01)
        now += 0.05
    assert now == pytest.approx(t + TTL - core.config.margin, abs=0.06)
    assert not core.is_leader(now)


def test_a_hung_renewal_does_not_delay_the_step_down() -> None:
    core = leader()
    core.sent(core.config.renew_every)  # never answers
    deadline = TTL - core.config.margin
    assert core.next_deadline() == pytest.approx(deadline)
    assert core.due(deadline) is Action.STEP_DOWN


def test_losing_the_row_deposes_and_nothing_brings_it_back() -> None:
    core = leader()
    core.sent(1.0)
    core.refused(1.1)  # another manager holds it now
    assert core.role is Role.DEPOSED and not core.is_leader(1.2) and core.reason
    core.sent(1.3)
    core.granted(8, 1.4)  # a late answer changes nothing
    assert core.role is Role.DEPOSED and core.due(100.0) is None and core.next_deadline() is None


def test_a_renewal_answering_with_another_epoch_deposes() -> None:
    core = leader(epoch=3)
    core.sent(1.0)
    core.granted(4, 1.1)
    assert core.role is Role.DEPOSED


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ttl"):
        LeaseConfig(0)
