"""OpenTelemetry traces of jobs (the optional extra ``otel``). Private.

The contract:

- **No import of its own.** conveyor never imports OpenTelemetry: this module uses the API only
  once the program has imported ``opentelemetry.trace`` itself (a program that never did has
  no span to continue and no tracer provider to record one). Until then, and always without
  the extra, every function is a cheap no-op (one lookup in ``sys.modules``).
- **Enqueue** (:func:`current_context`): called in the enqueueing caller's task, once per
  enqueue call (not per job). It gives the W3C trace context of the caller's current span,
  ``{"traceparent": ..., "tracestate": ...}`` (``tracestate`` only if there is one) as compact
  JSON, which the store keeps on each job of the call (the ``trace_context`` column), or
  ``None`` when no valid span is current: then nothing more is done.
- **Attempt** (:func:`start_attempt`): each attempt runs in a span ``conveyor.run <handler>``
  (kind ``CONSUMER``) with the attributes ``conveyor.job_id``, ``conveyor.attempt`` (1 for the
  first) and ``conveyor.handler``, current while the handler runs (in its thread, for a sync
  handler), so the handler's own spans are its children. It ends with ``conveyor.outcome``:
  the :class:`conveyor._job.Event` that ends the attempt as its worker settled it
  (``completed``, ``retried``, ``failed``, ``cancelled``, ``interrupted``, ``recovered``; a
  timeout is a ``retried`` or ``failed`` attempt whose error says so). A failed attempt
  (``retried``, ``failed``) has the status ``ERROR`` with its error's last line, and the
  exception its handler raised recorded as an event.
- **Child, not link**: the attempt's span is a *child* of the stored context, so the request
  that enqueued a job, the job and every retry of it are one trace (the attempts siblings under
  the enqueueing span). A job enqueued outside any span gets a new trace per attempt (a root
  span: the worker's own current context is ignored).
- Without a tracer provider (the API's default, which records nothing) no span is started.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import contextvars

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

_API_MODULE: Final = "opentelemetry.trace"
"""Imported by any program that makes spans or sets a tracer provider."""

FAILED_OUTCOMES: Final = frozenset({"retried", "failed"})
"""The outcomes of an attempt that failed: its span's status is ``ERROR``."""


class _Api:
    """The parts of the OpenTelemetry API used here, bound once the program imported it."""

    def __init__(self) -> None:
        # Imported here, never before the program imported the API itself.
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.trace = trace
        self.context = context
        self.propagator = TraceContextTextMapPropagator()
        self._inactive = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        self._provider: object = None
        self._tracer: Tracer | None = None

    def tracer(self) -> Tracer | None:
        """conveyor's tracer from the global tracer provider, or ``None`` while that is the
        API's default (or a no-op one), which records nothing. Made again when the provider
        changes."""
        provider = self.trace.get_tracer_provider()
        if provider is not self._provider:
            self._provider = provider
            self._tracer = (
                None if isinstance(provider, self._inactive) else provider.get_tracer("conveyor")
            )
        return self._tracer

    def parent(self, stored: str | None) -> Context:
        """The context a stored trace context continues: an empty one (a new trace) when
        there is none or it cannot be read."""
        root = self.context.Context()
        if stored is None:
            return root
        try:
            carrier = json.loads(stored)
        except ValueError:
            return root
        if not isinstance(carrier, dict):
            return root
        return self.propagator.extract(carrier, context=root)


_api: _Api | None = None


def _bound() -> _Api | None:
    """The API, if the program has imported it (bound on the first call that finds it)."""
    global _api
    if _api is None and sys.modules.get(_API_MODULE) is not None:
        _api = _Api()
    return _api


def current_context() -> str | None:
    """The W3C trace context of the current span as compact JSON, or ``None`` when no valid
    span is current (or OpenTelemetry is not in use)."""
    api = _api or _bound()
    if api is None:
        return None
    if not api.trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    api.propagator.inject(carrier)
    return json.dumps(carrier, separators=(",", ":")) if carrier else None


class AttemptSpan:
    """The span an attempt runs in: made current around the handler's call by
    :meth:`activate` and :meth:`deactivate`, and ended by :meth:`end`."""

    __slots__ = ("_api", "_span", "_token")

    def __init__(self, api: _Api, span: Span) -> None:
        self._api = api
        self._span = span
        self._token: contextvars.Token[Any] | None = None

    def activate(self) -> None:
        """Make the span current in this task (and in the threads it starts from now on)."""
        self._token = self._api.context.attach(self._api.trace.set_span_in_context(self._span))

    def deactivate(self) -> None:
        """Undo :meth:`activate`, in the same task."""
        if self._token is not None:
            self._api.context.detach(self._token)
            self._token = None

    def record(self, exception: BaseException) -> None:
        """Record what the handler raised as an event of the span."""
        self._span.record_exception(exception)

    def end(self, outcome: str, error: str | None = None) -> None:
        """End the span with the attempt's ``outcome`` (an event's value); ``error``, the one
        line that says what went wrong, describes a failed attempt's status."""
        span = self._span
        span.set_attribute("conveyor.outcome", outcome)
        if outcome in FAILED_OUTCOMES:
            span.set_status(self._api.trace.StatusCode.ERROR, error)
        span.end()


def start_attempt(name: str, job_id: int, attempt: int, stored: str | None) -> AttemptSpan | None:
    """Start the span of attempt ``attempt`` of job ``job_id`` (handler ``name``), a child of
    the ``stored`` trace context (a root without one); ``None`` when nothing would record it."""
    api = _api or _bound()
    if api is None:
        return None
    tracer = api.tracer()
    if tracer is None:
        return None
    span = tracer.start_span(
        f"conveyor.run {name}",
        context=api.parent(stored),
        kind=api.trace.SpanKind.CONSUMER,
        attributes={
            "conveyor.job_id": job_id,
            "conveyor.attempt": attempt,
            "conveyor.handler": name,
        },
    )
    return AttemptSpan(api, span)
