"""The broker model closed like the live default broker: the same identity decisions, from the same core.

``BrokerModel(identities=...)`` decides connects, publishes and subscriptions with
``IdentityRegistry.connect_verdict`` / ``publish_verdict`` / ``subscribe_verdict``
(orchestrator/core/identity.py), the calls the embedded broker's guard makes. An unenrolled device is
refused at CONNECT and the manager never hears of it; an enrolled one that claims another's id is
dropped; nobody but the manager subscribes to the fleet's topics.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import simpy

from orchestrator import wire
from orchestrator.core.identity import IdentityRegistry, new_enrollment
from twin.broker_model import BrokerModel, Will
from twin.vmanager import ManagerConfig, VirtualManager

DOMAIN = "auth"
T = wire.Topics(DOMAIN, "default")


def _enroll(reg: IdentityRegistry, kind: str, pid: str) -> str:
    key = bytes(32) if kind == "proplet" else None  # our proplets sign receipts (not used here)
    e = new_enrollment(kind=kind, proplet_id=pid, password=f"pw-{pid}", salt=b"0123456789ab",
                       signing_key=key, wall=0.0)  # fmt: skip
    reg.enroll(e.identity)
    return e.password


def _device(env: simpy.Environment, broker: BrokerModel, pid: str, password: str | None,
            claims: str | None = None) -> Any:  # fmt: skip
    will = Will(T.alive, wire.encode(wire.Heartbeat(pid, "offline")), 1)
    client = broker.client(pid, keepalive=2, will=will, username=pid if password else None, password=password)
    client.connect()
    name = claims or pid

    def beat() -> Any:
        yield env.timeout(0.1)
        if client.connected:
            client.publish(T.create, wire.encode(wire.Discovery(name, "default", {})), 1)
            client.subscribe("#", 1)  # a proplet may not listen to everything
        for _ in range(5):
            if client.connected:
                client.publish(T.alive, wire.encode(wire.Heartbeat(name, "alive")), 1)
            yield env.timeout(1.0)

    env.process(beat())
    return client


def test_unenrolled_device_is_refused_and_the_manager_never_registers_it() -> None:
    env = simpy.Environment()
    reg = IdentityRegistry()
    manager_pw = _enroll(reg, "manager", f"propeller-manager-{DOMAIN}-default")
    good_pw = _enroll(reg, "proplet", "p-good")
    liar_pw = _enroll(reg, "proplet", "p-liar")
    broker = BrokerModel(env, persistence=False, identities=reg)
    events: list[Mapping[str, Any]] = []
    manager = VirtualManager(env, broker, ManagerConfig(DOMAIN, 1.0, 3.0), lambda e, _t: events.append(e),
                             random.Random(1), username=f"propeller-manager-{DOMAIN}-default",
                             password=manager_pw)  # fmt: skip
    manager.start()
    good = _device(env, broker, "p-good", good_pw)
    ghost = _device(env, broker, "p-ghost", None)
    wrong = _device(env, broker, "p-wrong", "guess")
    _device(env, broker, "p-liar", liar_pw, claims="p-good-twin")
    env.run(until=4.0)

    assert good.connected and not ghost.connected and not wrong.connected
    assert manager.engine is not None
    assert set(manager.engine.proplets) == {"p-good"}
    why = {cid: reason for _, cid, reason in broker.refusals}
    assert why["p-ghost"] == "connect refused: anonymous clients are refused (no user name)"
    assert why["p-wrong"] == "connect refused: unknown user name"
    assert "names proplet 'p-good-twin', not the sender 'p-liar'" in why["p-liar"]
    assert broker.stats.publish_dropped >= 2 and broker.stats.subscribe_refused == 2  # p-good's "#" too


def test_open_broker_model_admits_anyone() -> None:
    env = simpy.Environment()
    broker = BrokerModel(env)
    ghost = _device(env, broker, "p-ghost", None)
    env.run(until=1.0)
    assert ghost.connected and not broker.refusals
