"""Logging setup for server processes (configured once, at the entry point)."""

from __future__ import annotations

import logging
import sys

import structlog

from quiver_server.config import LoggingConfig


def configure_logging(config: LoggingConfig) -> None:
    """JSON lines in production, readable lines on a terminal (format "auto")."""
    level = getattr(logging, config.level.upper())
    use_json = config.format == "json" or (config.format == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
