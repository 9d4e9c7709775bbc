"""Shared test fixtures: the machine's services (Mosquitto, PostgreSQL) and per-area fixture modules.

Tests that need PostgreSQL or Mosquitto skip with a reason when the service is not reachable, unless
PROPELLER_REQUIRE_SERVICES=1 (set by .ci/run), in which case they fail: CI must exercise them for real.
"""

from __future__ import annotations

import os
import socket

import pytest

pytest_plugins = [
    "tests.fixtures.mqtt",
    "tests.fixtures.store",
    "tests.fixtures.unique_ids",
    "hil.plugin",
]

MOSQUITTO_HOST = os.environ.get("PROPELLER_TEST_MOSQUITTO_HOST", "127.0.0.1")
MOSQUITTO_PORT = int(os.environ.get("PROPELLER_TEST_MOSQUITTO_PORT", "1883"))
POSTGRES_URL = os.environ.get(
    "PROPELLER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def services_required() -> bool:
    return os.environ.get("PROPELLER_REQUIRE_SERVICES") == "1"


def tcp_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _need(service: str, host: str, port: int) -> None:
    if tcp_reachable(host, port):
        return
    reason = f"{service} is not reachable on {host}:{port}"
    if services_required():
        pytest.fail(f"{reason}, and PROPELLER_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mosquitto_url() -> str:
    """URL of the machine's Mosquitto (mqtt://127.0.0.1:1883); skips or fails when it is down."""
    _need("Mosquitto", MOSQUITTO_HOST, MOSQUITTO_PORT)
    return f"mqtt://{MOSQUITTO_HOST}:{MOSQUITTO_PORT}"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL of the machine's PostgreSQL database `test`; skips or fails when it is down."""
    _need("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_URL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

