"""AsyncSimClock: simpy driven from asyncio, ordering, injection from MQTT callbacks, no idle spinning."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import Any

import pytest
import simpy

from orchestrator.adapters.mqtt import MqttClient
from tests.fixtures.mqtt import eventually
from twin.clock import AsyncSimClock


def _trace(env: simpy.Environment) -> list[tuple[float, str]]:
    fired: list[tuple[float, str]] = []

    def proc(name: str, period: float) -> Generator[simpy.Event, Any, None]:
        while True:
            yield env.timeout(period)
            fired.append((env.now, name))

    for name, period in (("a", 0.3), ("b", 0.5), ("c", 0.25), ("d", 0.5)):
        env.process(proc(name, period))
    return fired


async def test_processes_fire_in_the_same_order_as_plain_simpy() -> None:
    reference_env = simpy.Environment()
    reference = _trace(reference_env)
    reference_env.run(until=1.55)
    env = simpy.Environment()
    fired = _trace(env)
    clock = AsyncSimClock(env, speed=20)
    await clock.run(until=1.55)
    assert env.now == 1.55
    assert fired == reference  # same times, and same order among events due at the same time
    assert [n for _, n in fired[:4]] == ["c", "a", "b", "d"]
    assert clock.lag_stats().events >= len(fired)


async def test_scaled_time_tracks_wall_time() -> None:
    env = simpy.Environment()
    ticks: list[float] = []

    def ticker() -> Generator[simpy.Event, Any, None]:
        while True:
            yield env.timeout(0.1)
            ticks.append(env.now)

    env.process(ticker())
    clock = AsyncSimClock(env, speed=4)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await clock.run(until=2.0)
    wall = loop.time() - t0
    lag = clock.lag_stats()
    print(f"\n2.0 simulated s at 4x: wall {wall:.3f} s (ideal 0.500), "
          f"lag median {lag.median_s * 1e3:.2f} ms, "
          f"p99 {lag.p99_s * 1e3:.2f} ms, max {lag.max_s * 1e3:.2f} ms over {lag.events} events")
    assert wall >= 0.49  # it can be late, never early
    assert len(ticks) >= 19  # 0.1 .. 2.0 (float accumulation may land the last one just past 2.0)


async def test_injected_calls_run_at_the_current_scaled_time_and_are_all_processed() -> None:
    env = simpy.Environment()
    inbox: simpy.Store = simpy.Store(env)
    got: list[tuple[float, int]] = []

    def consumer() -> Generator[simpy.Event, Any, None]:
        while True:
            item = yield inbox.get()
            got.append((env.now, item))

    env.process(consumer())
    clock = AsyncSimClock(env, speed=10)

    async def feeder() -> None:
        for i in range(20):
            await asyncio.sleep(0.01)
            clock.inject(inbox.put, i)

    feed = asyncio.create_task(feeder())
    await clock.run(until=5.0)
    await feed
    assert [i for _, i in got] == list(range(20))
    assert [t for t, _ in got] == sorted(t for t, _ in got)
    assert 0 < got[0][0] < got[-1][0] < 5.0
    assert clock.injected == 20


async def test_the_driver_does_not_spin_when_idle() -> None:
    env = simpy.Environment()
    clock = AsyncSimClock(env, speed=1)
    cpu0 = time.process_time()
    await clock.run(until=1.0)
    cpu = time.process_time() - cpu0
    print(f"\nidle second: {clock.iterations} wake-ups, {cpu * 1e3:.1f} ms CPU")
    assert clock.iterations <= 1.0 / clock.min_tick
    assert clock.iterations <= 1.0 / clock.max_sleep + 5  # idle: it sleeps max_sleep at a time


async def test_a_busy_simulation_is_batched_into_ticks() -> None:
    env = simpy.Environment()

    def busy() -> Generator[simpy.Event, Any, None]:
        while True:
            yield env.timeout(0.0001)  # 10 000 events per simulated second

    env.process(busy())
    clock = AsyncSimClock(env, speed=1)
    await clock.run(until=0.5)
    assert clock.iterations <= 0.5 / clock.min_tick + 5  # far fewer wake-ups than the 5000 events
    assert clock.lag_stats().events >= 4000


async def test_mqtt_callbacks_inject_into_the_simulation(broker_url: str, unique_topic: str) -> None:
    """A simulated device publishes through a real client; replies come back through inject()."""
    env = simpy.Environment()
    clock = AsyncSimClock(env, speed=10)
    inbox: simpy.Store = simpy.Store(env)
    rtts: list[float] = []
    device = MqttClient(broker_url, f"dev-{unique_topic[2:14]}",
                        on_message=lambda _t, p: clock.inject(inbox.put, p))  # fmt: skip

    def reply(_topic: str, payload: bytes) -> None:
        echo.publish(f"{unique_topic}/down", payload, 1)

    echo = MqttClient(broker_url, f"echo-{unique_topic[2:14]}", on_message=reply)
    await device.connect()
    await echo.connect()
    await device.subscribe_and_wait(f"{unique_topic}/down", 1)
    await echo.subscribe_and_wait(f"{unique_topic}/up", 1)

    def proc() -> Generator[simpy.Event, Any, None]:
        for i in range(5):
            sent = env.now
            device.publish(f"{unique_topic}/up", str(i).encode(), 1)
            reply = yield inbox.get()
            assert reply == str(i).encode()
            rtts.append(env.now - sent)
            yield env.timeout(0.5)

    env.process(proc())
    try:
        await clock.run(until=20.0)
        await eventually(lambda: len(rtts) == 5)
    finally:
        await device.disconnect()
        await echo.disconnect()
    assert all(r > 0 for r in rtts)


def test_bad_arguments_are_named() -> None:
    env = simpy.Environment()
    with pytest.raises(ValueError, match="speed"):
        AsyncSimClock(env, speed=0)
    with pytest.raises(ValueError, match="min_tick"):
        AsyncSimClock(env, min_tick=0.1, max_sleep=0.01)


async def test_run_rejects_a_past_until() -> None:
    env = simpy.Environment()
    env.run(until=3)
    with pytest.raises(ValueError, match="before the simulation's now=3"):
        await AsyncSimClock(env).run(until=1)
