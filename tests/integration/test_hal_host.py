"""The HAL host functions the probe component does not reach, called as the linker calls them."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proplets.runtime.hal.errors import HalError
from proplets.runtime.hal.host import HalRun, MessageBus
from proplets.runtime.hal.options import HalOptions


def sleep_until(end: float) -> None:  # a run nobody stops
    time.sleep(max(0.0, end - time.monotonic()))


@pytest.fixture
def run(tmp_path: Path) -> Iterator[HalRun]:
    r = HalRun(
        "task-1", HalOptions(str(tmp_path / "root"), ("127.0.0.1",)), MessageBus(), sleep_until, 1 << 20
    )
    yield r
    r.close()


def test_clock_random_and_contexts(run: HalRun) -> None:
    first = run.get_monotonic_time()
    second = run.get_monotonic_time()
    as_ns = lambda t: getattr(t, "elapsed-seconds") * 10**9 + getattr(t, "elapsed-nanoseconds")  # noqa: E731
    assert as_ns(second) >= as_ns(first) >= 0
    assert 1 <= run.resolution() <= 10**9
    assert len(run.get_random_bytes(32)) == 32
    with pytest.raises(HalError, match="at most 1048576"):
        run.get_random_bytes(1 << 21)
    assert run.get_entropy_info().source == "platform"
    with pytest.raises(HalError, match="reseed is not supported"):
        run.reseed(b"x")
    handle = run.create_context()
    run.destroy_context(handle)
    with pytest.raises(HalError, match="no crypto context"):
        run.destroy_context(handle)
    names = {getattr(c, "feature-name"): c.supported for c in run.list_capabilities()}
    assert names["storage"] and not names["gpu"] and not names["attestation"]


def test_storage_listing_metadata_and_deletes(run: HalRun) -> None:
    box = run.create_container("box")
    run.store_object(box, "b", b"22")
    run.store_object(box, "a", b"1")
    assert run.list_objects(box) == ["a", "b"]
    meta = run.get_metadata(box, "b")
    assert meta.size == 2 and getattr(meta, "content-type") == "application/octet-stream"
    run.delete_object(box, "a")
    assert run.list_objects(box) == ["b"]
    with pytest.raises(HalError, match="does not exist"):
        run.delete_object(box, "a")
    with pytest.raises(HalError, match="already exists"):
        run.create_container("box")
    run.delete_container(box)
    assert not (Path(run.options.storage_dir) / "box").exists()
    with pytest.raises(HalError, match="no open container"):
        run.list_objects(box)


def test_a_symlink_out_of_the_root_is_not_followed(run: HalRun, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = Path(run.options.storage_dir)
    root.mkdir(parents=True)
    (root / "link").symlink_to(outside)
    with pytest.raises(HalError, match="outside the task's storage"):
        run.open_container("link")


def test_events_unsubscribe_and_resource_allocations(run: HalRun) -> None:
    sub = run.subscribe("crypto")
    run.hash(b"x", "sha256")
    (event,) = run.poll_events(sub)
    assert getattr(event, "event-type") == "crypto" and event.payload == b"sha256"
    assert run.poll_events(sub) == []
    run.unsubscribe(sub)
    with pytest.raises(HalError, match="no event subscription"):
        run.poll_events(sub)
    request = type("Req", (), {"resource-type": "memory", "amount": 600_000, "priority": 1})()
    granted = run.allocate(request)
    assert granted.__dict__["granted-amount"] == 600_000
    assert run.query_available("memory") == (1 << 20) - 600_000
    with pytest.raises(HalError, match="cannot allocate 600000 memory"):
        run.allocate(request)
    run.deallocate(granted.__dict__["allocation-id"])
    assert run.query_available("memory") == 1 << 20


def test_socket_send_receive_close_and_no_listening(run: HalRun) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(conn.recv(100).upper())

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    handle = run.create_socket("tcp")
    addr = type("Addr", (), {"ip": "127.0.0.1", "port": port})()
    run.connect(handle, addr)
    assert run.send(handle, b"hello") == 5
    assert run.receive(handle, 100) == b"HELLO"
    run.close_socket(handle)
    with pytest.raises(HalError, match="no socket"):
        run.send(handle, b"x")
    t.join(5)
    server.close()
    listener = run.create_socket("udp")
    with pytest.raises(HalError, match="outgoing connections only"):
        run.bind(listener, addr)
    with pytest.raises(HalError, match="not supported"):
        run.create_socket("tls")
    with pytest.raises(HalError, match="gpu not available"):
        run.gpu(1, 2)


def test_an_inbox_lives_while_any_run_of_its_task_does() -> None:
    bus = MessageBus()
    bus.register("latent")
    bus.register("latent")  # two invocations of one latent task
    bus.unregister("latent")
    bus.send("other", "latent", b"still here")
    message = bus.receive("latent")
    assert message is not None and message.payload == b"still here"
    bus.unregister("latent")
    with pytest.raises(HalError, match="no workload 'latent'"):
        bus.send("other", "latent", b"gone")
