"""Outgoing HTTP for components (``wasi:http/outgoing-handler``), each request checked first.

Why this module exists (and is not a library call): wasmtime-py links wasmtime's own ``wasi:http`` host
(``Linker.add_wasi_http``), which sends every request from Rust straight to the request's authority:
there is no per-request hook (Rust's ``WasiHttpView::send_request`` is not in the C API), no proxy
setting, and WASI's socket address check does not apply to it. Linked as is, a guest could reach any
address, cloud metadata services included. Writing our own ``wasi:http`` in Python is not possible
either: its bodies and futures are ``wasi:io`` streams and pollables, shared with the rest of WASI p2,
and only wasmtime can create those.

So wasmtime's host does all the HTTP work and one function is ours: the guest's import of
``wasi:http/outgoing-handler.handle``, the only way a request leaves. We define it under the exact
name the guest imports (an exact name wins over the semver-compatible one ``add_wasi_http`` defines).
The gate reads the request's scheme and authority, resolves the host and checks every address with the
proplet's allow-list (``proplets/egress.py``, the one module delivery and the HAL sockets use); a request
that passes goes to wasmtime's own ``handle``, with its timeouts capped to the task's remaining wall
time (wasmtime cannot interrupt a guest blocked in a host call, so the request itself must give up).
A refused request gets ``error-code.HTTP-request-denied`` and a run note naming the rule.

Python cannot call a host function directly, so ``GATE_WAT`` (a small component in the component text
format, built by wasmtime itself: no toolchain) imports wasmtime's ``wasi:http`` and re-exports what
the gate needs; it is instantiated in the guest's store from a linker that has only wasmtime's host.

Not covered: wasmtime resolves the name again when it connects, so a DNS answer that changes between
the gate's lookup and wasmtime's (rebinding) is not caught. Literal IP authorities are exact.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import component as cm

from proplets import egress

HANDLER_PREFIX = "wasi:http/outgoing-handler@"
_NS_PER_MS = 1_000_000

# error-code of wasi:http/types@0.2.x, case for case (a variant type is matched structurally)
_ERROR_CODE = r"""
    (type $dns (record (field "rcode" (option string)) (field "info-code" (option u16))))
    (export "DNS-error-payload" (type $dns-e (eq $dns)))
    (type $tls (record (field "alert-id" (option u8)) (field "alert-message" (option string))))
    (export "TLS-alert-received-payload" (type $tls-e (eq $tls)))
    (type $fsp (record (field "field-name" (option string)) (field "field-size" (option u32))))
    (export "field-size-payload" (type $fsp-e (eq $fsp)))
    (type $ec (variant
      (case "DNS-timeout") (case "DNS-error" $dns-e) (case "destination-not-found")
      (case "destination-unavailable") (case "destination-IP-prohibited")
      (case "destination-IP-unroutable") (case "connection-refused") (case "connection-terminated")
      (case "connection-timeout") (case "connection-read-timeout") (case "connection-write-timeout")
      (case "connection-limit-reached") (case "TLS-protocol-error") (case "TLS-certificate-error")
      (case "TLS-alert-received" $tls-e) (case "HTTP-request-denied")
      (case "HTTP-request-length-required") (case "HTTP-request-body-size" (option u64))
      (case "HTTP-request-method-invalid") (case "HTTP-request-URI-invalid")
      (case "HTTP-request-URI-too-long") (case "HTTP-request-header-section-size" (option u32))
      (case "HTTP-request-header-size" (option $fsp-e))
      (case "HTTP-request-trailer-section-size" (option u32)) (case "HTTP-request-trailer-size" $fsp-e)
      (case "HTTP-response-incomplete") (case "HTTP-response-header-section-size" (option u32))
      (case "HTTP-response-header-size" $fsp-e) (case "HTTP-response-body-size" (option u64))
      (case "HTTP-response-trailer-section-size" (option u32))
      (case "HTTP-response-trailer-size" $fsp-e)
      (case "HTTP-response-transfer-coding" (option string))
      (case "HTTP-response-content-coding" (option string)) (case "HTTP-response-timeout")
      (case "HTTP-upgrade-failed") (case "HTTP-protocol-error") (case "loop-detected")
      (case "configuration-error") (case "internal-error" (option string))))
    (export "error-code" (type $ec-e (eq $ec)))
"""

# The three request-options timeouts: (getter, setter) method names of wasi:http/types@0.2.x.
TIMEOUTS = ("connect-timeout", "first-byte-timeout", "between-bytes-timeout")


def _options_methods() -> str:
    out = []
    for name in TIMEOUTS:
        out.append(
            f'(export "[method]request-options.{name}" '
            '(func (param "self" (borrow $opts)) (result (option u64))))'
        )
        out.append(
            f'(export "[method]request-options.set-{name}" '
            '(func (param "self" (borrow $opts)) (param "duration" (option u64)) (result (result))))'
        )
    return "\n    ".join(out)


def _options_plumbing() -> tuple[str, str, str, str, str]:
    """Aliases, lowerings, core imports, core bodies and lifts for the timeout getters/setters."""
    aliases, lowers, imports, bodies, lifts = [], [], [], [], []
    for name in TIMEOUTS:
        for kind, method in (("get", name), ("set", f"set-{name}")):
            fn = f"${kind}-{name}"
            aliases.append(f'(alias export $types "[method]request-options.{method}" (func {fn}))')
            lowers.append(
                f'(core func {fn}-low (canon lower (func {fn}) (memory (core memory $libc "mem"))))'
            )
        imports.append(f'(import "host" "get-{name}" (func $get-{name} (param i32 i32)))')
        imports.append(f'(import "host" "set-{name}" (func $set-{name} (param i32 i32 i64) (result i32)))')
        bodies.append(
            f'(func (export "get-{name}") (param i32) (result i32)\n'
            f"      (call $get-{name} (local.get 0) (i32.const 16))\n"
            "      (call $drop-opts (local.get 0))\n"
            "      (i32.const 16))\n"
            f'    (func (export "set-{name}") (param i32 i32 i64) (result i32)\n'
            "      (local $r i32)\n"
            f"      (local.set $r (call $set-{name} (local.get 0) (local.get 1) (local.get 2)))\n"
            "      (call $drop-opts (local.get 0))\n"
            "      (local.get $r))"
        )
        lifts.append(
            f'(func (export "get-{name}") (param "self" (borrow $opts)) (result (option u64))\n'
            f'    (canon lift (core func $gate "get-{name}") (memory (core memory $libc "mem"))))\n'
            f'  (func (export "set-{name}") (param "self" (borrow $opts)) (param "duration" (option u64))'
            f" (result (result))\n"
            f'    (canon lift (core func $gate "set-{name}")))'
        )
    return (
        "\n  ".join(aliases),
        "\n  ".join(lowers),
        "\n    ".join(imports),
        "\n    ".join(bodies),
        "\n  ".join(lifts),
    )


def _gate_wat() -> str:
    aliases, lowers, imports, bodies, lifts = _options_plumbing()
    with_timeouts = " ".join(
        f'(export "get-{n}" (func $get-{n}-low)) (export "set-{n}" (func $set-{n}-low))' for n in TIMEOUTS
    )
    return (
        r"""
(component
  (import "wasi:http/types@0.2.0" (instance $types
    (export "outgoing-request" (type $req (sub resource)))
    (export "request-options" (type $opts (sub resource)))
    (export "future-incoming-response" (type $fut (sub resource)))
    (type $scheme (variant (case "HTTP") (case "HTTPS") (case "other" string)))
    (export "scheme" (type $scheme-e (eq $scheme)))
"""
        + _ERROR_CODE
        + r"""
    (export "[method]outgoing-request.authority" (func (param "self" (borrow $req)) (result (option string))))
    (export "[method]outgoing-request.scheme" (func (param "self" (borrow $req)) (result (option $scheme-e))))
    (export "[constructor]request-options" (func (result (own $opts))))
    """
        + _options_methods()
        + r"""
  ))
  (alias export $types "outgoing-request" (type $req))
  (alias export $types "request-options" (type $opts))
  (alias export $types "future-incoming-response" (type $fut))
  (alias export $types "error-code" (type $ec))
  (alias export $types "scheme" (type $scheme))
  (import "wasi:http/outgoing-handler@0.2.0" (instance $handler
    (alias outer 1 $req (type $req))
    (alias outer 1 $opts (type $opts))
    (alias outer 1 $fut (type $fut))
    (alias outer 1 $ec (type $ec))
    (export "handle" (func (param "request" (own $req)) (param "options" (option (own $opts)))
                           (result (result (own $fut) (error $ec)))))
  ))
  (alias export $types "[method]outgoing-request.authority" (func $authority))
  (alias export $types "[method]outgoing-request.scheme" (func $scheme-of))
  (alias export $types "[constructor]request-options" (func $new-options))
  (alias export $handler "handle" (func $handle))
  """
        + aliases
        + r"""
  ;; a bump allocator, reset at every call: results are copied out before the next call
  (core module $libc
    (memory (export "mem") 1)
    (global $bump (export "bump") (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (block $fits
        (br_if $fits (i32.le_u (global.get $bump) (i32.shl (memory.size) (i32.const 16))))
        (br_if $fits (i32.ne (memory.grow (i32.add (i32.shr_u (local.get 3) (i32.const 16)) (i32.const 1)))
                             (i32.const -1)))
        unreachable)
      (local.get $p)))
  (core instance $libc (instantiate $libc))
  (core func $authority-low (canon lower (func $authority) (memory (core memory $libc "mem"))
                                         (realloc (core func $libc "realloc"))))
  (core func $scheme-low (canon lower (func $scheme-of) (memory (core memory $libc "mem"))
                                      (realloc (core func $libc "realloc"))))
  (core func $handle-low (canon lower (func $handle) (memory (core memory $libc "mem"))
                                      (realloc (core func $libc "realloc"))))
  (core func $new-options-low (canon lower (func $new-options)))
  """
        + lowers
        + r"""
  (core func $drop-req (canon resource.drop $req))
  (core func $drop-opts (canon resource.drop $opts))
  (core module $gate
    (import "libc" "mem" (memory 1))
    (import "libc" "bump" (global $bump (mut i32)))
    (import "host" "authority" (func $authority (param i32 i32)))
    (import "host" "scheme" (func $scheme (param i32 i32)))
    (import "host" "handle" (func $handle (param i32 i32 i32 i32)))
    (import "host" "new-options" (func $new-options (result i32)))
    (import "host" "drop-req" (func $drop-req (param i32)))
    (import "host" "drop-opts" (func $drop-opts (param i32)))
    """
        + imports
        + r"""
    ;; a borrowed handle must be dropped before returning (canonical ABI)
    (func (export "authority") (param i32) (result i32)
      (global.set $bump (i32.const 1024))
      (call $authority (local.get 0) (i32.const 16))
      (call $drop-req (local.get 0))
      (i32.const 16))
    (func (export "scheme") (param i32) (result i32)
      (global.set $bump (i32.const 1024))
      (call $scheme (local.get 0) (i32.const 16))
      (call $drop-req (local.get 0))
      (i32.const 16))
    (func (export "handle") (param i32 i32 i32) (result i32)
      (global.set $bump (i32.const 1024))
      (call $handle (local.get 0) (local.get 1) (local.get 2) (i32.const 16))
      (i32.const 16))
    (func (export "new-options") (result i32) (call $new-options))
    """
        + bodies
        + r"""
  )
  (core instance $gate (instantiate $gate
    (with "libc" (instance $libc))
    (with "host" (instance
      (export "authority" (func $authority-low)) (export "scheme" (func $scheme-low))
      (export "handle" (func $handle-low)) (export "new-options" (func $new-options-low))
      (export "drop-req" (func $drop-req)) (export "drop-opts" (func $drop-opts))
      """
        + with_timeouts
        + r"""))))
  (func (export "authority") (param "self" (borrow $req)) (result (option string))
    (canon lift (core func $gate "authority") (memory (core memory $libc "mem"))))
  (func (export "scheme") (param "self" (borrow $req)) (result (option $scheme))
    (canon lift (core func $gate "scheme") (memory (core memory $libc "mem"))))
  (func (export "handle") (param "request" (own $req)) (param "options" (option (own $opts)))
                          (result (result (own $fut) (error $ec)))
    (canon lift (core func $gate "handle") (memory (core memory $libc "mem"))))
  (func (export "new-options") (result (own $opts)) (canon lift (core func $gate "new-options")))
  """
        + lifts
        + "\n)\n"
    )


GATE_WAT = _gate_wat()


@dataclass(frozen=True)
class Target:
    """Where a request would go: scheme, host and port (the scheme's default port when none given)."""

    scheme: str
    host: str
    port: int

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def request_target(scheme: Any, authority: str | None) -> Target:
    """The target of a request from its wasi:http scheme (a Variant, or None) and authority.

    wasmtime sends a request with no scheme as https. ValueError names what is wrong."""
    tag = getattr(scheme, "tag", None) if scheme is not None else "HTTPS"
    if tag == "HTTP":
        name, default_port = "http", 80
    elif tag == "HTTPS":
        name, default_port = "https", 443
    else:
        raise ValueError(f"scheme {getattr(scheme, 'payload', scheme)!r} is not http or https")
    if not authority:
        raise ValueError("the request has no authority (host)")
    host, port = egress.split_host_port(authority.rsplit("@", 1)[-1], "authority")  # userinfo: not where
    return Target(name, host, default_port if port is None else port)


def check_target(policy: egress.EgressPolicy, target: Target, addresses: list[str]) -> egress.Verdict:
    """Allowed only if every address the host resolves to is allowed (the connection may use any)."""
    if not addresses:
        return egress.Verdict(False, f"{target.host} resolves to no address")
    for address in addresses:
        verdict = policy.check(target.host, target.port, address)
        if not verdict.allowed:
            return verdict
    return verdict


class HostUnresolved(Exception):
    """The request's host has no address: the guest gets ``error-code.DNS-error`` with this text."""


def resolve(target: Target) -> list[str]:
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise HostUnresolved(e.strerror or str(e)) from e
    return sorted({str(info[4][0]) for info in infos})


def dns_error(rcode: str) -> cm.Variant:
    """``error-code.DNS-error`` as wasmtime's own client reports a failed lookup (no info code)."""
    payload = cm.Record()
    setattr(payload, "rcode", rcode)  # noqa: B010 - cm.Record is untyped: its fields are set by name
    setattr(payload, "info-code", None)  # a WIT field name, not a Python identifier
    return cm.Variant("DNS-error", payload)


def timeout_cap_ns(deadline: float | None, now: float) -> int | None:
    """The longest a request's connect / first byte / gap between bytes may take: the time left
    before the task's wall-time deadline (at least 1 ms), or no cap without a deadline."""
    if deadline is None:
        return None
    return max(_NS_PER_MS, int((deadline - now) * 1e9))


def compile_gate(engine: wasmtime.Engine) -> cm.Component:
    """The gate component for ``engine`` (a few milliseconds: the runtime compiles it once)."""
    return cm.Component(engine, GATE_WAT)


class HttpGate:
    """Links wasi:http for one run: wasmtime's host, with ``handle`` checked (see the module doc)."""

    def __init__(
        self,
        engine: wasmtime.Engine,
        gate_component: cm.Component,
        policy: egress.EgressPolicy,
        note: Callable[[str], None],
        deadline: float | None = None,
        resolver: Callable[[Target], list[str]] = resolve,
    ) -> None:
        self.engine = engine
        self.gate_component = gate_component
        self.policy = policy
        self.note = note
        self.deadline = deadline
        self.resolver = resolver
        self.denied = 0
        self.notes = 0
        self._funcs: dict[str, cm.Func] = {}

    def link(self, linker: cm.Linker, store: wasmtime.Store, imports: list[str]) -> None:
        """Add wasi:http to ``linker`` (which must not have it yet) for a guest importing ``imports``."""
        store.set_wasi_http()
        linker.add_wasi_http()
        host = cm.Linker(self.engine)
        host.add_wasi_http()
        gate = host.instantiate(store, self.gate_component)
        names = ["authority", "scheme", "handle", "new-options"]
        names += [f"{kind}-{t}" for t in TIMEOUTS for kind in ("get", "set")]
        for name in names:
            func = gate.get_func(store, name)
            assert func is not None, name
            self._funcs[name] = func
        linker.allow_shadowing = True  # the guest's exact version may be the one add_wasi_http defined
        with linker.root() as root:
            for name in sorted({n for n in imports if n.startswith(HANDLER_PREFIX)}):
                with root.add_instance(name) as handler:
                    handler.add_func("handle", self._handle)
        linker.allow_shadowing = False

    def _call(self, store: Any, name: str, *args: Any) -> Any:
        func = self._funcs[name]
        out = func(store, *args)
        func.post_return(store)
        return out

    def _handle(self, store: Any, request: Any, options: Any) -> Any:
        scheme = self._call(store, "scheme", request)
        try:
            target = request_target(scheme, self._call(store, "authority", request))
        except ValueError as e:
            return self._deny(store, request, options, f"wasi:http request refused: {e}")
        try:
            addresses = self.resolver(target)
        except HostUnresolved as e:
            request.drop(store)
            if options is not None:
                options.drop(store)
            self._note(f"wasi:http request to {target.url()} failed: {target.host} does not resolve ({e})")
            return dns_error(str(e))
        verdict = check_target(self.policy, target, addresses)
        if not verdict.allowed:
            why = f"wasi:http request to {target.url()} refused: {verdict.rule}"
            return self._deny(store, request, options, why)
        cap = timeout_cap_ns(self.deadline, time.monotonic())
        if cap is not None:
            if options is None:
                options = self._call(store, "new-options")
            for name in TIMEOUTS:
                current = self._call(store, f"get-{name}", options)
                if current is None or current > cap:
                    self._call(store, f"set-{name}", options, cap)
        return self._call(store, "handle", request, options)

    def _deny(self, store: Any, request: Any, options: Any, why: str) -> cm.Variant:
        request.drop(store)
        if options is not None:
            options.drop(store)
        self.denied += 1
        self._note(why)
        return cm.Variant("HTTP-request-denied")

    def _note(self, why: str) -> None:
        self.notes += 1
        if self.notes <= 5:  # a guest retrying in a loop does not flood the run's notes
            self.note(why)
