"""Topic names of one channel, and refusing IDs that would make topics invalid."""

from __future__ import annotations

import pytest

from orchestrator.wire import Topics


def test_topic_names_match_the_upstream_table() -> None:
    t = Topics("tenant", "chan")
    assert t.create == "m/tenant/c/chan/control/proplet/create"
    assert t.alive == "m/tenant/c/chan/control/proplet/alive"
    assert t.results == "m/tenant/c/chan/control/proplet/results"
    assert t.invoke_results == "m/tenant/c/chan/control/proplet/invoke_results"
    assert t.logs == "m/tenant/c/chan/control/proplet/logs"  # our extension: live task output
    assert t.metrics == "m/tenant/c/chan/control/proplet/metrics"
    assert t.task_metrics == "m/tenant/c/chan/control/proplet/task_metrics"
    assert t.start == "m/tenant/c/chan/control/manager/start"
    assert t.stop == "m/tenant/c/chan/control/manager/stop"
    assert t.invoke == "m/tenant/c/chan/control/manager/invoke"
    assert t.registry_request == "m/tenant/c/chan/registry/proplet"
    assert t.registry_server == "m/tenant/c/chan/registry/server"
    assert t.all == "m/tenant/c/chan/#"


def test_subscriptions_of_each_side() -> None:
    t = Topics("d", "c")
    assert t.proplet_subscriptions == [t.start, t.stop, t.invoke, t.registry_server]
    assert set(t.manager_subscriptions) == {
        t.create, t.alive, t.results, t.logs, t.invoke_results, t.metrics, t.task_metrics,
        t.registry_request,
    }  # fmt: skip
    assert not set(t.proplet_subscriptions) & set(t.manager_subscriptions)


def test_ids_are_substituted_verbatim_like_upstream() -> None:
    # Upstream's Rust test: tenant "tenant/1" yields m/tenant/1/c/...
    t = Topics("tenant/1", "channel/1")
    assert t.start == "m/tenant/1/c/channel/1/control/manager/start"
    assert t.suffix(t.start) == "control/manager/start"


def test_suffix_outside_the_channel_is_none() -> None:
    t = Topics("d", "c1")
    assert t.suffix("m/d/c/c1/control/proplet/alive") == "control/proplet/alive"
    assert t.suffix("m/d/c/c12/control/proplet/alive") is None  # a channel that merely shares a prefix
    assert t.suffix("m/d/c/c2/control/proplet/alive") is None
    assert t.suffix("m/d/c/c1") is None
    assert t.suffix("fl/rounds/1/updates/p") is None


@pytest.mark.parametrize(
    ("domain", "channel", "named"),
    [
        ("", "c", "domain"),
        ("d", "", "channel"),
        ("a+b", "c", "domain"),
        ("d", "x#", "channel"),
        ("d", "a\x00b", "channel"),
    ],
)
def test_invalid_ids_are_refused_naming_which(domain: str, channel: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Topics(domain, channel)


def test_topics_are_values() -> None:
    assert Topics("d", "c") == Topics("d", "c")
    assert len({Topics("d", "c"), Topics("d", "c")}) == 1
