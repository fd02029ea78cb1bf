"""Logging setup for server processes (configured once, at the entry point).

structlog renders every line: JSON lines in production, readable lines on a
terminal (format "auto" picks by whether stderr is a terminal). Lines written
through the standard `logging` module (libraries, the client package) go
through the same renderer, so a JSON log stays one JSON object per line.

Every line logged while a call is handled carries its ``trace_id`` and
``span_id`` (from the current OpenTelemetry span), so logs join traces. When
this process does not trace but the caller sent a ``traceparent``, lines carry
the caller's ``trace_id``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

from quiver_server.config import LoggingConfig


def add_trace_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: ``trace_id``/``span_id`` of the current span, if any.

    A remote span is the caller's (this process does not trace, the caller does):
    its trace id joins the caller's trace, its span id is not ours to log.
    """
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        if not context.is_remote:
            event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def configure_logging(config: LoggingConfig) -> None:
    """JSON lines in production, readable lines on a terminal (format "auto")."""
    level = getattr(logging, config.level.upper())
    terminal = sys.stderr.isatty()
    use_json = config.format == "json" or (config.format == "auto" and not terminal)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json
        else structlog.dev.ConsoleRenderer(colors=terminal)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_context,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per line (text and newline together): `serve --workers` shares one
        # stderr between processes, unbuffered in the image, and print() writes the
        # newline apart, so another worker's line could land in between.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    ))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_quiver", False):
            root.removeHandler(old)
    handler._quiver = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
