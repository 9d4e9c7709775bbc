"""Starts sent to one proplet alone, on real brokers with real proplets (orchestrator/wire/topics.py).

Our proplets read their own start topic and announce it; a proplet that does not (here one run with
``direct_start=False``, as upstream's would be) keeps getting its starts on the shared topic, which
every proplet reads. Each proplet's engine counts the starts it received that were meant for another
proplet: none of ours reaches another proplet. On the embedded broker the fleet is closed (enrolled
identities), so the broker's rule for who may read which start topic is exercised too.
"""

from __future__ import annotations

import base64
from collections import Counter

import wasmtime

from orchestrator import wire
from tests.integration.conftest import Cluster, eventually

ADD = base64.b64encode(
    wasmtime.wat2wasm(
        '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
    )
).decode()


async def test_each_start_reaches_only_its_proplet_and_upstream_style_proplets_keep_the_shared_topic(
    cluster: Cluster,
) -> None:
    c = cluster
    ours = [await c.add_proplet(pid) for pid in ("direct-1", "direct-2")]
    shared = await c.add_proplet("shared-1", direct_start=False)
    topics = wire.Topics(c.manager.settings.domain, c.manager.settings.channel)
    seen: Counter[tuple[str, str]] = Counter()  # (topic, proplet the start names)

    def on_message(topic: str, payload: bytes) -> None:
        start = wire.decode(topics, topic, payload)
        seen[(topic, start.proplet_id if isinstance(start, wire.StartTask) else repr(start))] += 1

    spy = c.peer(f"direct-spy-{topics.domain}", on_message=on_message)  # trusted like the manager
    await spy.connect()
    await spy.subscribe_and_wait(topics.every_start, 1)
    try:
        tasks = [await c.run_task({"name": "add", "file": ADD, "inputs": [i, 1]}) for i in range(9)]
        assert [t["state"] for t in tasks] == [3] * 9 and [t["results"] for t in tasks] == [
            str(i + 1) for i in range(9)
        ]
        ran = Counter(t["proplet_id"] for t in tasks)
        assert set(ran) == {"direct-1", "direct-2", "shared-1"}  # round robin over all three

        async def all_seen() -> bool:
            return sum(seen.values()) >= 9

        await eventually(all_seen, 10, "the spy to see every start")
        assert seen == {
            (topics.start_for("direct-1"), "direct-1"): ran["direct-1"],
            (topics.start_for("direct-2"), "direct-2"): ran["direct-2"],
            (topics.start, "shared-1"): ran["shared-1"],
        }
        # The shared-topic proplet never received another's start; ours received only the shared
        # topic's (every proplet reads it: broadcasts and upstream's managers use it), not each other's.
        assert shared.engine.counters.get("starts_for_others", 0) == 0, shared.engine.counters
        for agent in ours:
            assert agent.engine.counters.get("starts_for_others", 0) == ran["shared-1"], agent.engine.counters
    finally:
        await spy.disconnect()
