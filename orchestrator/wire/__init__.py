"""Sans-I/O codec of the Propeller MQTT wire protocol (topics and JSON payloads).

Shared by the manager, our Python proplet, the twin's simulated devices, and mirrored by our C
firmware. ``WIRE_VERSION`` names the upstream tree this follows: ``absmach/propeller`` ``main`` at
``102e676e`` (2026-08-20), as described in ``reference/propeller-wire.md`` §1–§2.

Usage::

    topics = Topics("tenant", "channel")
    payload = encode(StartTask(id=..., name="add", file=wasm, inputs=("1", "2")))   # Profile.RUST
    msg = decode(topics, topic, payload)   # a message dataclass, or CodecError and nothing else

Profiles: ``Profile.RUST`` (default) is what the upstream Rust proplet and Go manager read and what our
Python proplet speaks. ``Profile.EMBEDDED`` is what the upstream Zephyr/WAMR firmware reads (and, for
proplet-to-manager messages, the shape it sends). Decoding accepts every shape; the profile only
matters when encoding.

Where the reference is ambiguous or upstream components disagree, this codec chooses:

1. ``cli_args`` (start, Rust profile) is always sent, as ``[]`` when empty. Go sends ``null``; the
   Rust proplet accepts ``null`` and ``[]``, Go's decoder accepts both, the firmware ignores the key,
   and ``[]`` is also correct for a plain ``Vec<String>`` should the null-default helper ever go.
2. ``inputs`` (start, invoke): the Rust profile sends strings (the Rust proplet rejects numbers);
   integers become their decimal text, integral floats below 2**53 become integer text ("3.0" -> "3",
   which WAVE parses for integer and float parameters), other floats their shortest repr. The
   embedded profile sends numbers: numeric strings ("42", "-1.5", "1e3") are converted, anything else
   is a CodecError naming ``inputs[i]``; more than 16 inputs (the firmware's MAX_INPUTS) is refused
   rather than silently truncated. ``inputs`` is omitted when empty in start (Go's omitempty) and
   always present in invoke (as the Go manager sends it). Decoding keeps inputs as given.
3. The embedded start keeps only ``id``, ``name``, ``image_url``, ``file``, ``inputs``, ``env`` and
   ``proplet_id``. ``proplet_id`` is ignored by the upstream firmware but kept so that *our* firmware
   can drop starts meant for another device (the upstream quirk "every start runs everywhere").
   ``id``/``name`` over 63 bytes and ``image_url`` over 255 are refused (the firmware's buffers).
4. Embedded payloads over 1023 bytes are refused for every message type, not just start: the firmware
   reads and builds payloads in 1024-byte buffers with a NUL terminator.
5. Stop is always ``{"id","name","state","proplet_id","broadcast"}`` with ``state`` a string, in both
   profiles (§2.4). Decoding accepts a numeric ``state`` (Go) and keeps it as its decimal text.
6. Results: the Rust profile sends ``{"task_id","proplet_id"?,"results","error":null|str,"attempt"?}``
   (``proplet_id`` omitted only when None); the embedded profile sends the firmware's two shapes,
   ``{"task_id","results"}`` and ``{"task_id","results","error"}``. Decoding: missing ``results`` is
   ``""``; ``error`` null or ``""`` is success (``is_success``); any JSON ``results`` is kept (FL
   envelopes are objects). Our extension ``receipt`` (a signed execution receipt, an object, checked
   by the manager: orchestrator/core/receipts.py) is sent in both profiles when the proplet signs.
7. Heartbeat ``status`` is required and must be ``alive`` or ``offline`` (an LWT is a Heartbeat with
   ``offline``); the upstream manager ignored it, which is the bug we do not repeat. ``namespace`` is
   always sent; keys are in each sender's order so golden payloads compare byte for byte.
8. Discovery metadata: known keys are type-checked (``tags`` a list of strings, the byte counts
   unsigned integers), nulls are treated as absent, unknown keys are dropped on decode and refused on
   encode. Our extensions ``free_memory_bytes`` and ``max_instances`` are sent in both profiles,
   and ``tee`` (bool), ``tee_type`` and ``hal`` (strings, docs/hal.md) when the proplet sets them
   (upstream managers ignore unknown metadata keys).
9. Metric ``timestamp`` is required and normalised to seconds: an RFC3339 string (nanoseconds kept,
   offset required) or a ``{"secs_since_epoch","nanos_since_epoch"}`` object give kind ``"unix"``; a
   number is the firmware's uptime in ms and gives kind ``"uptime_ms"`` (value / 1000). Encoding
   follows the kind, not the profile: ``"unix"`` as the Rust object, ``"uptime_ms"`` as a number of
   ms. Precision through a float is about a microsecond for present-day UNIX times. Metric maps keep
   the known keys only; integer metrics accept integral floats (cJSON may print large ones so).
10. ``monitoring_profile`` must carry all ten keys (Rust has no defaults); ``interval`` is integer
    seconds (what the Rust proplet reads; Go's nanosecond Duration is a known upstream quirk).
11. Our extensions in start: ``sha256`` (64 hex digits, lower-cased), ``attempt`` (omitted when 0) and
    ``limits`` (a map of non-negative numbers, e.g. ``fuel``, ``memory_bytes``, ``timeout_s``; keys are
    not restricted so that runtimes can add limits). Only ``attempt`` is sent in the embedded profile
    (the firmware matches it against a stop's; upstream firmware ignores unknown keys).
12. Registry chunks: ``0 <= chunk_idx < total_chunks`` and ``total_chunks >= 1`` on both sides; the
    embedded profile also requires ``total_chunks == 1`` (the firmware assembles one chunk only).
    A refusal (our extension) is a ``RegistryChunk`` with ``error`` set, sent as ``chunk_idx`` 0,
    ``total_chunks`` 0 and empty ``data``; decoding a message with a non-empty ``error`` gives one.
13. Invoke in the embedded profile is a CodecError: the firmware does not subscribe to invoke.
    So is ``TaskLogs`` (our live-output topic ``control/proplet/logs``), and the result extensions
    ``result_type`` (``text``/``json``/``binary``) and ``logs`` (``[{"stream","data"}]``) are never
    sent in the embedded profile; upstream managers ignore both the topic and the keys.
14. Topic IDs may contain ``/`` (upstream substitutes them verbatim) but not ``+``, ``#`` or NUL.
15. Our delivery extensions: results may carry ``refused`` (``"busy"`` | ``"out_of_memory"``, see
    ``refusals``: nothing ran, the attempt is not spent); stop may carry ``attempt`` (stop only that
    attempt); ``control/manager/discover`` ``{"proplet_id"}`` asks a proplet to re-send its discovery.
    The embedded profile sends the stop's ``attempt`` (our firmware ignores a stop naming another
    attempt than the one it runs) and ``discover`` (our firmware answers with its discovery).
16. Tracing (``--otel``, docs/timelines.md): start and result may carry ``traceparent``, a W3C trace
    context (``00-<32 hex>-<16 hex>-<2 hex>``). Omitted when tracing is off (payloads byte-identical),
    never added to embedded-profile starts (``with_traceparent`` leaves them unchanged); upstream
    proplets and managers ignore the key. Decoding is tolerant: a malformed value is dropped, the
    message kept.

Decoding never raises anything but ``CodecError``: bytes that are not UTF-8, invalid JSON, NaN or
Infinity, numbers that overflow, JSON nested deeper than 64 levels, unpaired surrogate escapes, a
top-level value that is not an object, wrong types (a boolean is never an integer), out-of-range
numbers, bad base64, and payloads over ``max_payload_bytes`` (10 MiB by default) are all refused with
the field named. When encoding, ``CodecError.topic`` holds the topic suffix.
"""

from orchestrator.wire import refusals
from orchestrator.wire.decode import decode, decode_payload
from orchestrator.wire.encode import (
    EMBEDDED_MAX_PAYLOAD_BYTES,
    encode,
    suffix_of,
    topic_for,
    with_traceparent,
)
from orchestrator.wire.errors import CodecError
from orchestrator.wire.fields import DEFAULT_MAX_PAYLOAD_BYTES
from orchestrator.wire.messages import (
    Discovery,
    DiscoveryRequest,
    Heartbeat,
    InvokeResult,
    InvokeTask,
    Message,
    Profile,
    PropletMetrics,
    RegistryChunk,
    RegistryRequest,
    StartTask,
    StopTask,
    TaskLogs,
    TaskMetrics,
    TaskResult,
)
from orchestrator.wire.topics import Topics, direct_start_ok

WIRE_VERSION = "propeller-2026.08"

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "EMBEDDED_MAX_PAYLOAD_BYTES",
    "WIRE_VERSION",
    "CodecError",
    "Discovery",
    "DiscoveryRequest",
    "Heartbeat",
    "InvokeResult",
    "InvokeTask",
    "Message",
    "Profile",
    "PropletMetrics",
    "RegistryChunk",
    "RegistryRequest",
    "StartTask",
    "StopTask",
    "TaskLogs",
    "TaskMetrics",
    "TaskResult",
    "Topics",
    "decode",
    "decode_payload",
    "direct_start_ok",
    "encode",
    "refusals",
    "suffix_of",
    "topic_for",
    "with_traceparent",
]
