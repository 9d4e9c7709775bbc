"""Host side of `elastic:hal@0.1.0` (wit/hal.wit) for one component run, on wasmtime's component Linker.

Only the HAL interfaces the component imports are linked; an interface we do not offer (another
package, another version, an unknown name) is left out, so instantiation fails naming the import.
Every function that returns `result<_, string>` turns a `HalError` (or any unexpected exception) into
`err(text)`: a guest sees a clear error, never a trap. wasmtime-py wants a result's payload bare unless
its cases are ambiguous by Python type (stack-notes §3e), so each function is wrapped with its type.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasmtime import component as cm

from proplets import egress
from proplets.runtime.hal import tee
from proplets.runtime.hal.errors import HalError
from proplets.runtime.hal.options import HalOptions
from proplets.runtime.hal.storage import Storage

PACKAGE = "elastic:hal"
VERSION = "0.1.0"
INTERFACES = (
    "platform",
    "attestation",
    "crypto",
    "clock",
    "random",
    "sockets",
    "gpu",
    "resources",
    "events",
    "communication",
    "storage",
)
MAX_RANDOM_BYTES = 1 << 20
MAX_RECEIVE_BYTES = 1 << 20
MAX_EVENTS = 1024
SOCKET_TIMEOUT_S = 10.0
NO_GPU = "gpu not available: this proplet has no GPU compute backend"


@dataclass
class Message:
    sender: str
    recipient: str
    payload: bytes


class MessageBus:
    """`communication` between workloads on the same proplet: one inbox per running HAL task."""

    def __init__(self, inbox_limit: int = 256) -> None:
        self._lock = threading.Lock()
        self._inboxes: dict[str, deque[Message]] = {}
        self._runs: dict[str, int] = {}  # invocations of a latent task share its id and its inbox
        self._limit = inbox_limit
        self._ids = itertools.count(1)

    def register(self, workload: str) -> None:
        with self._lock:
            self._inboxes.setdefault(workload, deque())
            self._runs[workload] = self._runs.get(workload, 0) + 1

    def unregister(self, workload: str) -> None:
        with self._lock:
            left = self._runs.get(workload, 1) - 1
            if left > 0:
                self._runs[workload] = left
                return
            self._runs.pop(workload, None)
            self._inboxes.pop(workload, None)

    def send(self, sender: str, recipient: str, data: bytes) -> int:
        with self._lock:
            inbox = self._inboxes.get(recipient)
            if inbox is None:
                raise HalError(f"no workload {recipient!r} is running on this proplet")
            if len(inbox) >= self._limit:
                raise HalError(f"inbox of {recipient!r} is full ({self._limit} messages)")
            inbox.append(Message(sender, recipient, data))
            return next(self._ids)

    def receive(self, workload: str) -> Message | None:
        with self._lock:
            inbox = self._inboxes.get(workload)
            return inbox.popleft() if inbox else None

    def workloads(self) -> list[str]:
        with self._lock:
            return sorted(self._inboxes)


def _record(**fields: Any) -> cm.Record:
    r = cm.Record()
    for name, value in fields.items():
        setattr(r, name.replace("_", "-"), value)
    return r


@dataclass
class HalRun:
    """One run's HAL state. `sleep_until(end)` sleeps until `end` (time.monotonic()) unless a stop or
    the wall-time limit cuts it short, and then returns why (the run's `_Watch.sleep_until`)."""

    task_id: str
    options: HalOptions
    bus: MessageBus
    sleep_until: Callable[[float], str | None]
    memory_limit: int | None = None
    started: float = field(default_factory=time.monotonic)
    _handles: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _contexts: set[int] = field(default_factory=set)
    _subscriptions: dict[int, tuple[str, deque[Any]]] = field(default_factory=dict)
    _allocations: dict[str, tuple[str, int]] = field(default_factory=dict)
    _sockets: dict[int, socket.socket | str] = field(default_factory=dict)
    _storage: Storage | None = None

    def __post_init__(self) -> None:
        self.tee_info = tee.TeeInfo(self.options.tee, "detected at proplet start-up")
        self.policy = egress.EgressPolicy(self.options.egress)
        self.bus.register(self.task_id)

    def close(self) -> None:
        self.bus.unregister(self.task_id)
        for s in self._sockets.values():
            if isinstance(s, socket.socket):
                s.close()
        self._sockets.clear()

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = Storage(Path(self.options.storage_dir), self.options.quota_bytes)
        return self._storage

    def emit(self, kind: str, payload: bytes) -> None:
        for etype, queue in self._subscriptions.values():
            if etype == kind and len(queue) < MAX_EVENTS:
                queue.append(_record(event_type=kind, timestamp=time.time_ns(), payload=payload))

    # -- platform ------------------------------------------------------------------------------------

    def capabilities(self) -> dict[str, bool]:
        return {
            **{name: True for name in INTERFACES if name not in ("gpu", "attestation")},
            "gpu": False,
            "attestation": self.tee_info.present and Path(self.options.tsm_root).is_dir(),
            "tee": self.tee_info.present,
        }

    def get_platform_info(self) -> cm.Record:
        kind = self.tee_info.kind if self.tee_info.present else "host"
        return _record(platform_type=kind, version=f"propeller-python-hal {VERSION}")

    def list_capabilities(self) -> list[cm.Record]:
        return [
            _record(feature_name=name, supported=ok, version=VERSION)
            for name, ok in self.capabilities().items()
        ]

    def has_capability(self, name: str) -> bool:
        return self.capabilities().get(name, False)

    # -- attestation ---------------------------------------------------------------------------------

    def attestation(self, report_data: bytes) -> bytes:
        try:
            evidence = tee.tsm_report(bytes(report_data), self.options.tsm_root)
        except tee.AttestationError as err:
            raise HalError(str(err)) from None
        self.emit("platform", b"attestation")
        return evidence

    # -- crypto --------------------------------------------------------------------------------------

    def hash(self, data: bytes, algorithm: str) -> bytes:
        self.emit("crypto", algorithm.encode())
        if algorithm in ("sha256", "sha512"):
            return hashlib.new(algorithm, bytes(data)).digest()
        if algorithm == "blake3":
            try:
                import blake3
            except ImportError:
                raise HalError(
                    "blake3 needs the 'blake3' package (pip install 'propeller-continuum[hal]')"
                ) from None
            return bytes(blake3.blake3(bytes(data)).digest())
        raise HalError(f"unknown hash algorithm {algorithm!r}")

    def _aead(self, key: bytes, algorithm: str) -> Any:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

        if len(key) != 32:
            raise HalError(f"{algorithm} needs a 32-byte key, got {len(key)} bytes")
        if algorithm == "aes256-gcm":
            return AESGCM(bytes(key))
        if algorithm == "chacha20-poly1305":
            return ChaCha20Poly1305(bytes(key))
        raise HalError(f"unknown cipher {algorithm!r}")

    def encrypt(self, data: bytes, key: bytes, algorithm: str) -> bytes:
        nonce = os.urandom(12)
        self.emit("crypto", b"encrypt")
        return nonce + self._aead(key, algorithm).encrypt(nonce, bytes(data), None)

    def decrypt(self, data: bytes, key: bytes, algorithm: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        aead = self._aead(key, algorithm)
        if len(data) < 12 + 16:
            raise HalError("ciphertext too short: expected 12-byte nonce || ciphertext || 16-byte tag")
        try:
            plain: bytes = aead.decrypt(bytes(data[:12]), bytes(data[12:]), None)
        except InvalidTag:
            raise HalError("decryption failed: wrong key or tampered ciphertext") from None
        self.emit("crypto", b"decrypt")
        return plain

    def generate_keypair(self) -> cm.Record:
        from cryptography.hazmat.primitives import serialization as ser
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
        public = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
        return _record(public_key=public, private_key=private)

    def sign(self, data: bytes, private_key: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if len(private_key) != 32:
            raise HalError(f"Ed25519 private key must be 32 bytes, got {len(private_key)}")
        return Ed25519PrivateKey.from_private_bytes(bytes(private_key)).sign(bytes(data))

    def verify(self, data: bytes, signature: bytes, public_key: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if len(public_key) != 32:
            raise HalError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
        try:
            Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), bytes(data))
        except InvalidSignature:
            return False
        return True

    def create_context(self) -> int:
        handle = next(self._handles)
        self._contexts.add(handle)
        return handle

    def destroy_context(self, handle: int) -> None:
        if handle not in self._contexts:
            raise HalError(f"no crypto context with handle {handle}")
        self._contexts.discard(handle)

    # -- clock, random -------------------------------------------------------------------------------

    def get_system_time(self) -> cm.Record:
        ns = time.time_ns()
        return _record(seconds=ns // 10**9, nanoseconds=ns % 10**9)

    def get_monotonic_time(self) -> cm.Record:
        ns = int((time.monotonic() - self.started) * 1e9)
        return _record(elapsed_seconds=ns // 10**9, elapsed_nanoseconds=ns % 10**9)

    def resolution(self) -> int:
        return max(1, int(time.get_clock_info("monotonic").resolution * 1e9))

    def sleep(self, duration_ns: int) -> None:
        reason = self.sleep_until(time.monotonic() + duration_ns / 1e9)
        if reason is not None:
            raise HalError(f"sleep interrupted: {reason}")

    def _length(self, length: int) -> int:
        if length > MAX_RANDOM_BYTES:
            raise HalError(f"at most {MAX_RANDOM_BYTES} random bytes per call, asked for {length}")
        return length

    def get_random_bytes(self, length: int) -> bytes:
        return os.urandom(self._length(length))

    def get_secure_random(self, length: int) -> bytes:
        return secrets.token_bytes(self._length(length))

    def get_entropy_info(self) -> cm.Record:
        # the kernel CSPRNG (getrandom): full quality, never blocks once seeded
        return _record(source="platform", quality=256, available_bytes=MAX_RANDOM_BYTES)

    def reseed(self, additional_entropy: bytes) -> None:
        # mixing guest bytes into the kernel pool needs privileges; refusing beats pretending
        raise HalError("reseed is not supported: the kernel CSPRNG reseeds itself")

    # -- storage -------------------------------------------------------------------------------------

    def create_container(self, name: str) -> int:
        h = self.storage.create_container(name)
        self.emit("storage", f"create-container {name}".encode())
        return h

    def open_container(self, name: str) -> int:
        return self.storage.open_container(name)

    def delete_container(self, handle: int) -> None:
        self.storage.delete_container(handle)
        self.emit("storage", b"delete-container")

    def store_object(self, container: int, key: str, data: bytes) -> int:
        h = self.storage.store_object(container, key, bytes(data))
        self.emit("storage", f"store-object {key}".encode())
        return h

    def retrieve_object(self, container: int, key: str) -> bytes:
        return self.storage.retrieve_object(container, key)

    def delete_object(self, container: int, key: str) -> None:
        self.storage.delete_object(container, key)
        self.emit("storage", f"delete-object {key}".encode())

    def list_objects(self, container: int) -> list[str]:
        return self.storage.list_objects(container)

    def get_metadata(self, container: int, key: str) -> cm.Record:
        m = self.storage.metadata(container, key)
        return _record(size=m.size, created_at=m.created_at, content_type=m.content_type)

    # -- communication, events, resources ------------------------------------------------------------

    def send_message(self, recipient: str, data: bytes, encrypt: bool) -> int:
        if encrypt:
            raise HalError("encrypted messages are not supported: messages never leave this proplet")
        return self.bus.send(self.task_id, recipient, bytes(data))

    def receive_message(self) -> cm.Record | None:
        m = self.bus.receive(self.task_id)
        if m is None:
            return None
        return _record(sender=m.sender, recipient=m.recipient, payload=m.payload, encrypted=False)

    def list_workloads(self) -> list[str]:
        return self.bus.workloads()

    def subscribe(self, event_type: str) -> int:
        handle = next(self._handles)
        self._subscriptions[handle] = (event_type, deque())
        return handle

    def unsubscribe(self, handle: int) -> None:
        if self._subscriptions.pop(handle, None) is None:
            raise HalError(f"no event subscription with handle {handle}")

    def poll_events(self, handle: int) -> list[Any]:
        sub = self._subscriptions.get(handle)
        if sub is None:
            raise HalError(f"no event subscription with handle {handle}")
        events = list(sub[1])
        sub[1].clear()
        return events

    def _available(self, kind: str) -> int:
        used = sum(amount for k, amount in self._allocations.values() if k == kind)
        if kind == "memory":
            if self.memory_limit is None:
                raise HalError("this task has no memory limit to allocate against")
            return max(0, self.memory_limit - used)
        if kind == "cpu":
            return max(0, (os.cpu_count() or 1) - used)
        if kind == "storage":
            return max(0, self.storage.quota_bytes - self.storage.used_bytes() - used)
        raise HalError(f"{kind} is not an allocatable resource on this proplet")

    def allocate(self, request: Any) -> cm.Record:
        kind, amount = getattr(request, "resource-type"), int(request.amount)
        available = self._available(kind)
        if amount > available:
            raise HalError(f"cannot allocate {amount} {kind}: {available} available within the task's limits")
        alloc_id = f"{kind}-{next(self._handles)}"
        self._allocations[alloc_id] = (kind, amount)
        return _record(allocation_id=alloc_id, granted_amount=amount)

    def deallocate(self, alloc_id: str) -> None:
        if self._allocations.pop(alloc_id, None) is None:
            raise HalError(f"no allocation {alloc_id!r}")

    def query_available(self, resource_type: str) -> int:
        return self._available(resource_type)

    # -- sockets (the fetch allow-list decides where) ------------------------------------------------

    def create_socket(self, protocol: str) -> int:
        if protocol not in ("tcp", "udp"):
            raise HalError(f"{protocol} sockets are not supported (tcp and udp are)")
        handle = next(self._handles)
        self._sockets[handle] = protocol
        return handle

    def _socket(self, handle: int) -> socket.socket | str:
        s = self._sockets.get(handle)
        if s is None:
            raise HalError(f"no socket with handle {handle}")
        return s

    def bind(self, handle: int, addr: Any) -> None:
        self._socket(handle)
        raise HalError("listening sockets are not allowed for tasks (outgoing connections only)")

    def listen(self, handle: int, backlog: int) -> None:
        self.bind(handle, None)

    def accept(self, handle: int) -> int:
        self.bind(handle, None)
        return 0

    def connect(self, handle: int, addr: Any) -> None:
        proto = self._socket(handle)
        if not isinstance(proto, str):
            raise HalError(f"socket {handle} is already connected")
        host, port = str(addr.ip), int(addr.port)
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        try:
            infos = socket.getaddrinfo(host, port, type=kind)
        except OSError as err:
            raise HalError(f"cannot resolve {host!r}: {err}") from None
        last = ""
        for family, stype, sproto, _name, sockaddr in infos:
            verdict = self.policy.check(host, port, str(sockaddr[0]))
            if not verdict.allowed:
                last = (
                    f"connection to {host}:{port} ({sockaddr[0]}) refused by the allow-list: {verdict.rule}"
                )
                continue
            s = socket.socket(family, stype, sproto)
            s.settimeout(SOCKET_TIMEOUT_S)
            try:
                s.connect(sockaddr)
            except OSError as err:
                s.close()
                last = f"cannot connect to {host}:{port}: {err}"
                continue
            self._sockets[handle] = s
            self.emit("network", f"connect {host}:{port}".encode())
            return
        raise HalError(last or f"no address for {host!r}")

    def _connected(self, handle: int) -> socket.socket:
        s = self._socket(handle)
        if isinstance(s, str):
            raise HalError(f"socket {handle} is not connected")
        return s

    def send(self, handle: int, data: bytes) -> int:
        try:
            return self._connected(handle).send(bytes(data))
        except OSError as err:
            raise HalError(f"send failed: {err}") from None

    def receive(self, handle: int, max_len: int) -> bytes:
        try:
            return self._connected(handle).recv(min(max_len, MAX_RECEIVE_BYTES))
        except OSError as err:
            raise HalError(f"receive failed: {err}") from None

    def close_socket(self, handle: int) -> None:
        s = self._sockets.pop(handle, None)
        if s is None:
            raise HalError(f"no socket with handle {handle}")
        if isinstance(s, socket.socket):
            s.close()

    # -- gpu -----------------------------------------------------------------------------------------

    def gpu(self, *_args: Any) -> Any:
        raise HalError(NO_GPU)


_GPU_FUNCS = (
    "list-adapters",
    "get-adapter-info",
    "create-device",
    "create-buffer",
    "write-buffer",
    "read-buffer",
    "create-compute-pipeline",
    "dispatch",
)


def _methods(run: HalRun, interface: str) -> dict[str, Callable[..., Any]]:
    if interface == "gpu":
        return {name: run.gpu for name in _GPU_FUNCS}
    names = _FUNCS[interface]
    table = {name: getattr(run, name.replace("-", "_")) for name in names}
    if interface == "sockets":
        table["close"] = run.close_socket
    return table


_FUNCS: dict[str, tuple[str, ...]] = {
    "platform": ("get-platform-info", "list-capabilities", "has-capability"),
    "attestation": ("attestation",),
    "crypto": (
        "hash",
        "encrypt",
        "decrypt",
        "generate-keypair",
        "sign",
        "verify",
        "create-context",
        "destroy-context",
    ),
    "clock": ("get-system-time", "get-monotonic-time", "resolution", "sleep"),
    "random": ("get-random-bytes", "get-secure-random", "get-entropy-info", "reseed"),
    "sockets": ("create-socket", "bind", "listen", "connect", "accept", "send", "receive"),
    "resources": ("allocate", "deallocate", "query-available"),
    "events": ("subscribe", "unsubscribe", "poll-events"),
    "communication": ("send-message", "receive-message", "list-workloads"),
    "storage": (
        "create-container",
        "open-container",
        "delete-container",
        "store-object",
        "retrieve-object",
        "delete-object",
        "list-objects",
        "get-metadata",
    ),
}


def _wrap(fn: Callable[..., Any], ftype: Any) -> Callable[..., Any]:
    result_t = ftype.result
    if not isinstance(result_t, cm.ResultType):
        return lambda _store, *args: fn(*args)
    tagged = result_t._tagged()

    def call(_store: Any, *args: Any) -> Any:
        try:
            value = fn(*args)
        except HalError as err:
            return cm.Variant("err", str(err)) if tagged else str(err)
        except Exception as err:  # a host bug must be the guest's error, never a trap
            text = f"internal HAL error: {type(err).__name__}: {err}"
            return cm.Variant("err", text) if tagged else text
        return cm.Variant("ok", value) if tagged else value

    return call


def hal_interface(import_name: str) -> str | None:
    """`elastic:hal/storage@0.1.0` -> "storage"; None for anything else (left for wasmtime to name)."""
    if not import_name.startswith(PACKAGE + "/"):
        return None
    rest = import_name[len(PACKAGE) + 1 :]
    name, _, version = rest.partition("@")
    return name if name in INTERFACES and version == VERSION else None


def imports_hal(component: cm.Component, engine: Any) -> bool:
    return any(hal_interface(n) for n in component.type.imports(engine))


def link(linker: cm.Linker, component: cm.Component, engine: Any, run: HalRun) -> None:
    """Define every `elastic:hal` interface `component` imports, with the functions it imports."""
    wanted = []
    for import_name, item in component.type.imports(engine).items():
        interface = hal_interface(import_name)
        ty = item.ty if interface is not None else None
        if interface is not None and isinstance(ty, cm.ComponentInstanceType):
            wanted.append((import_name, interface, {n: e.ty for n, e in ty.exports(engine).items()}))
    if not wanted:
        return
    with linker.root() as root:
        for import_name, interface, funcs in wanted:
            table = _methods(run, interface)
            with root.add_instance(import_name) as inst:
                for fname, ftype in funcs.items():
                    fn = table.get(fname)
                    if fn is not None and isinstance(ftype, cm.FuncType):
                        inst.add_func(fname, _wrap(fn, ftype))
