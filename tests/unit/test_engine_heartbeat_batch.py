"""``Engine.heartbeat_batch`` decides what ``handle`` decides, heartbeat by heartbeat.

Two engines see the same fleet: one gets every heartbeat as a message at its time, the other gets them
in one-second batches (each with its own time, delivered up to a second late), as the twin's bulk
heartbeats send them. Proplets go silent, come back, get a task, and one was never announced; both
engines must declare the same deaths at the same instants and hold the same proplets alive.
"""

from __future__ import annotations

import math
import random

from orchestrator import wire
from orchestrator.core.commands import LogEvent, MessageReceived
from orchestrator.core.engine import Engine, EngineConfig

T = wire.Topics("hb", "default")
WALL = 1_000_000.0


def _engine() -> Engine:
    ids = (f"task-{i}" for i in range(1000))
    config = EngineConfig(domain="hb", heartbeat_interval=1.0, liveness_timeout=3.0)
    return Engine(config, new_id=lambda: next(ids))


def _decisions(engine: Engine, now: float) -> list[tuple[float, str, str]]:
    out = []
    for c in engine.take_commands():
        if isinstance(c, LogEvent) and c.name in ("proplet_dead", "proplet_alive", "discovery_requested"):
            out.append((round(now, 9), c.name, str(dict(c.fields).get("proplet_id"))))
    return out


def test_batched_heartbeats_give_the_same_liveness_decisions_as_messages() -> None:
    rng = random.Random(7)
    pids = [f"p{i}" for i in range(30)]
    phase = {p: rng.uniform(0, 1) for p in pids}
    silent = {p: (rng.uniform(5, 20), rng.uniform(1, 8)) for p in rng.sample(pids, 10)}  # from, for
    # (time, proplet, heartbeat): every proplet announces itself (but p0) and heartbeats every second
    events: list[tuple[float, str, bytes]] = []
    for p in pids:
        t = phase[p]
        if p != "p0":
            events.append((t - 1e-3, p, wire.encode(wire.Discovery(p, "default", {"total_memory_bytes": 1}))))
        while t < 40:
            start, length = silent.get(p, (math.inf, 0))
            if not start <= t < start + length:
                events.append((t, p, wire.encode(wire.Heartbeat(p, "alive"))))
            t += 1.0
    events.sort()
    per_message, batched = _engine(), _engine()
    a: list[tuple[float, str, str]] = []
    b: list[tuple[float, str, str]] = []
    task = per_message.create_task({"name": "t", "file": "AGFzbQEAAAA="}, WALL)
    batched.create_task({"name": "t", "file": "AGFzbQEAAAA="}, WALL)

    clock = {id(per_message): 0.0, id(batched): 0.0}  # each engine's time only moves forward

    def timers(engine: Engine, until: float, log: list[tuple[float, str, str]]) -> None:
        while (d := engine.next_deadline()) is not None and d <= until:
            d = clock[id(engine)] = max(d, clock[id(engine)])
            engine.on_timer(d, WALL + d)
            log += _decisions(engine, d)
        clock[id(engine)] = max(until, clock[id(engine)])

    pending: list[tuple[float, wire.Heartbeat]] = []
    for t, _p, payload in events:
        topic = T.alive if b"alive" in payload else T.create
        timers(per_message, t, a)
        per_message.handle(MessageReceived(topic, payload), t, WALL + t)
        a += _decisions(per_message, t)
        if t >= 12 and task.state.name == "PENDING":  # a task lands on someone mid-run
            per_message.start_task(task.id, t, WALL + t)
            batched.start_task(task.id, t, WALL + t)
        # the batched engine: discoveries as messages, heartbeats at the end of their second
        while pending and pending[0][0] < math.floor(t):
            timers(batched, math.floor(pending[0][0]) + 1.0, b)
            due = [x for x in pending if math.floor(x[0]) == math.floor(pending[0][0])]
            pending = pending[len(due) :]
            now = math.floor(due[0][0]) + 1.0
            batched.heartbeat_batch([h for _, h in due], [s for s, _ in due], now, WALL + now)
            b += _decisions(batched, now)
        if topic == T.alive:
            pending.append((t, wire.decode(T, topic, payload)))  # type: ignore[arg-type]
        else:
            timers(batched, t, b)
            batched.handle(MessageReceived(topic, payload), t, WALL + t)
            b += _decisions(batched, t)
    timers(per_message, 40.0, a)
    if pending:
        timers(batched, 40.0, b)
        batched.heartbeat_batch([h for _, h in pending], [s for s, _ in pending], 40.0, WALL + 40.0)
        b += _decisions(batched, 40.0)
    deaths_a = [x for x in a if x[1] == "proplet_dead"]
    deaths_b = [x for x in b if x[1] == "proplet_dead"]
    assert len(deaths_a) >= 5, a  # the silences long enough to be noticed were
    assert sorted(deaths_b) == sorted(deaths_a)
    # the rest (back alive, discovery asked of p0) is logged when the batch arrives: same facts
    rest_a = sorted(x[1:] for x in a if x[1] != "proplet_dead")
    assert sorted(x[1:] for x in b if x[1] != "proplet_dead") == rest_a
    alive = {p.id for p in per_message.proplets.values() if per_message.is_alive(p, 39.0)}
    assert alive == {p.id for p in batched.proplets.values() if batched.is_alive(p, 39.0)}


def test_a_steady_batched_fleet_keeps_one_liveness_entry_per_batch_and_still_sees_a_silence() -> None:
    engine = _engine()
    pids = [f"q{i}" for i in range(200)]
    for p in pids:
        announce = wire.encode(wire.Discovery(p, "default", {"total_memory_bytes": 1}))
        engine.handle(MessageReceived(T.create, announce), 0.0, WALL)
    engine.take_commands()
    deaths: list[tuple[float, str, str]] = []
    silent, will = "q7", "q9"
    for k in range(1, 60):  # one batch a second, every proplet once, at k - 0.5 + i/1000
        hbs = [
            wire.Heartbeat(p, "alive")
            for p in pids
            if not (p == silent and k > 20) and not (p == will and k > 30)
        ]
        engine.heartbeat_batch(hbs, [k - 0.5 + i / 1000 for i in range(len(hbs))], float(k), WALL + k)
        if k == 30:  # q9's last will: dead at once, while a batch entry still holds its deadline
            engine.handle(MessageReceived(T.alive, wire.encode(wire.Heartbeat(will, "offline"))), k, WALL + k)
            deaths += _decisions(engine, float(k))
        while (d := engine.next_deadline()) is not None and d <= k:
            engine.on_timer(d, WALL + d)
            deaths += _decisions(engine, d)
        # heard every second, each proplet is held by the latest batch: the heap does not grow with them
        # (the batch the will left holding all but one is split into one entry each, once)
        assert len(engine._liveness) < 10 or k == 30
    t7 = 20 - 0.5 + pids.index(silent) / 1000 + 3.0  # its last heartbeat + the 3 s timeout
    assert [x for x in deaths if x[1] == "proplet_dead"] == [
        (round(t7, 9), "proplet_dead", silent),
        (30.0, "proplet_dead", will),
    ]
    assert sum(engine.is_alive(p, 59.0) for p in engine.proplets.values()) == 198


def test_a_batch_repeated_by_key_leaves_the_same_engine_state_as_messages() -> None:
    """Keyed batches (the cohort's buckets, sent again every interval as the same list) keep their
    members' last-seen times in the batch: after ``settle_liveness`` every proplet's fields, the deaths
    and their instants are those of the per-message engine. A member goes silent, one sends its last
    will, one gets a task, one is deleted: each leaves the batch and the rest stay batched."""
    pids = [f"r{i}" for i in range(50)]
    per_message, batched = _engine(), _engine()
    for engine in (per_message, batched):
        for p in pids:
            announce = wire.encode(wire.Discovery(p, "default", {"total_memory_bytes": 1}))
            engine.handle(MessageReceived(T.create, announce), 0.0, WALL)
        engine.take_commands()
    task = per_message.create_task({"name": "t", "file": "AGFzbQEAAAA="}, WALL)
    batched.create_task({"name": "t", "file": "AGFzbQEAAAA="}, WALL)
    silent, will, gone = "r7", "r9", "r11"
    a: list[tuple[float, str, str]] = []
    b: list[tuple[float, str, str]] = []
    buckets = [pids[:25], pids[25:]]  # two buckets, heard at k - 0.7 + i/100 and k - 0.3 + i/100
    sent: list[list[wire.Heartbeat]] = [[], []]
    times: list[list[float]] = [[], []]
    fast_rounds = 0

    def timers(engine: Engine, until: float, log: list[tuple[float, str, str]]) -> None:
        while (d := engine.next_deadline()) is not None and d <= until:
            engine.on_timer(d, WALL + d)
            log += _decisions(engine, d)

    for k in range(1, 40):
        for j, members in enumerate(buckets):
            members = [p for p in members if not (p == silent and k > 12) and not (p == will and k > 20)]
            members = [p for p in members if not (p == gone and k > 25)]
            if [h.proplet_id for h in sent[j]] != members:  # a new list: the engine sees the change
                sent[j] = [wire.Heartbeat(p, "alive") for p in members]
            else:
                fast_rounds += 1
            times[j] = [k - 0.7 + 0.4 * j + i / 100 for i in range(len(members))]
            for h, t in zip(sent[j], times[j], strict=True):
                timers(per_message, t, a)
                per_message.handle(MessageReceived(T.alive, wire.encode(h)), t, WALL + t)
                a += _decisions(per_message, t)
            now = k - 0.6 + 0.4 * j
            timers(batched, now, b)
            batched.heartbeat_batch(sent[j], times[j], now, WALL + now, key=j)
            b += _decisions(batched, now)
        if k == 20:  # r9's last will
            offline = MessageReceived(T.alive, wire.encode(wire.Heartbeat(will, "offline")))
            for engine, log in ((per_message, a), (batched, b)):
                engine.handle(offline, float(k), WALL + k)
                log += _decisions(engine, float(k))
        if k == 15:  # a task lands on one member: its heartbeats go the full way from then on
            per_message.start_task(task.id, float(k), WALL + k)
            batched.start_task(task.id, float(k), WALL + k)
        if k == 25:
            per_message.delete_proplet(gone)
            batched.delete_proplet(gone)
        if k == 33:  # mid-run, while batched (the next rounds make the batches again)
            _same_proplets(batched, per_message)
    # read while batched: the batch's time, not the Proplet's stale field
    assert batched.is_alive(batched.proplets["r1"], 39.0) and per_message.is_alive(
        per_message.proplets["r1"], 39.0
    )
    timers(per_message, 45.0, a)
    timers(batched, 45.0, b)
    assert fast_rounds > 40  # most rounds took the keyed path
    assert len(batched._liveness) < 20  # one entry per batch round, not one per heartbeat
    deaths = [x for x in b if x[1] == "proplet_dead"]
    assert deaths == [x for x in a if x[1] == "proplet_dead"]
    assert {x[2] for x in deaths} == set(pids) - {gone}  # r7 and r9 early; at the end, everyone left
    assert sorted(x[1:] for x in b) == sorted(x[1:] for x in a)
    _same_proplets(batched, per_message)


def _same_proplets(batched: Engine, per_message: Engine) -> None:
    batched.settle_liveness()
    assert batched.proplets.keys() == per_message.proplets.keys()
    for pid, p in per_message.proplets.items():
        q = batched.proplets[pid]
        assert (q.alive, q.last_seen, q.alive_history) == (p.alive, p.last_seen, p.alive_history), pid
