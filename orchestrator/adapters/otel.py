"""Optional OpenTelemetry spans across manager -> MQTT -> proplet -> result (``--otel``, off by default).

Spans are made here, in the adapters, from what the cores already produce; the engines never import
OpenTelemetry. One task gives one trace:

- ``propeller.dispatch`` (manager, PRODUCER): when a start is published. Its context goes in the start
  message as our ``traceparent`` extension (``wire.with_traceparent``; upstream proplets ignore it).
- ``propeller.execute`` (proplet, CONSUMER, child of dispatch): fetch and run, until the result is
  queued. Its context goes back in the result's ``traceparent``.
- ``propeller.result`` (manager, CONSUMER, child of execute): the result received.

Needs the ``otel`` extra (``pip install 'propeller-continuum[otel]'``). When no tracer provider was
installed by the application, one is: service name ``propeller-manager`` / ``propeller-proplet``,
spans exported as ``OTEL_TRACES_EXPORTER`` says: ``otlp`` (needs ``opentelemetry-exporter-otlp``;
``OTEL_EXPORTER_OTLP_ENDPOINT`` etc.), ``console``, or ``none``.
"""

from __future__ import annotations

import os
from typing import Any

from orchestrator.wire.decode import TRACEPARENT_RE

INSTRUMENTATION = "propeller"


class OtelUnavailable(ValueError):
    """--otel cannot work here (a missing package, a bad OTEL_TRACES_EXPORTER): the message says why."""


def _install_provider(service: str) -> None:
    """An SDK tracer provider with the exporter ``OTEL_TRACES_EXPORTER`` names, unless one is set."""
    from opentelemetry import trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return  # the application (or a test) installed its own
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    exporter: SpanExporter | None = None
    if choice == "console":
        exporter = ConsoleSpanExporter()
    elif choice == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise OtelUnavailable(
                "--otel: OTEL_TRACES_EXPORTER=otlp (the default) needs the package "
                "opentelemetry-exporter-otlp-proto-http; install it, "
                "or set OTEL_TRACES_EXPORTER=console or none"
            ) from None
        exporter = OTLPSpanExporter()
    elif choice != "none":
        raise OtelUnavailable(f"--otel: OTEL_TRACES_EXPORTER must be otlp, console or none, got {choice!r}")
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


class Tracing:
    """The spans of one process; every method is a no-op when disabled."""

    def __init__(self, enabled: bool, service: str) -> None:
        self.enabled = enabled
        self._tracer: Any = None
        self._propagator: Any = None
        if not enabled:
            return
        try:
            from opentelemetry import trace
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            raise OtelUnavailable(
                "--otel needs OpenTelemetry: pip install 'propeller-continuum[otel]'"
            ) from None
        _install_provider(service)
        self._tracer = trace.get_tracer(INSTRUMENTATION)
        self._propagator = TraceContextTextMapPropagator()
        self._kinds = {"producer": trace.SpanKind.PRODUCER, "consumer": trace.SpanKind.CONSUMER}

    def start(
        self, name: str, attributes: dict[str, Any], parent: str | None = None, kind: str = "consumer"
    ) -> Any:
        """A started span, child of the ``parent`` trace context (a traceparent string) if any;
        ``attributes`` named ``propeller.<key>`` (None values left out)."""
        if self._tracer is None:
            return None
        context = None
        if isinstance(parent, str) and TRACEPARENT_RE.fullmatch(parent):
            context = self._propagator.extract({"traceparent": parent})
        attrs = {f"propeller.{k}": v for k, v in attributes.items() if v is not None}
        return self._tracer.start_span(name, context=context, kind=self._kinds[kind], attributes=attrs)

    def traceparent(self, span: Any) -> str | None:
        """The W3C trace context of ``span`` (to carry in a message)."""
        if span is None:
            return None
        from opentelemetry import trace

        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        return carrier.get("traceparent")

    @staticmethod
    def end(span: Any, error: str | None = None) -> None:
        if span is None:
            return
        if error:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, error[:256]))
        span.end()
