"""configure_logging: JSON lines with trace ids, stdlib lines included, readable on a terminal.

Each case runs in a fresh interpreter: structlog binds cached loggers to the
configuration of the moment, process-wide.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap

import pytest

# Every case starts an interpreter.
pytestmark = pytest.mark.slow


def run(code: str) -> subprocess.CompletedProcess[str]:
    prelude = textwrap.dedent("""
        import logging, structlog
        from opentelemetry.sdk.trace import TracerProvider
        from quiver_server.config import LoggingConfig
        from quiver_server.observability import configure_logging
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60)


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_lines_carry_trace_and_span_ids_inside_a_span() -> None:
    result = run("""
        configure_logging(LoggingConfig(format="json", level="info"))
        log = structlog.get_logger("t")
        tracer = TracerProvider().get_tracer("t")
        log.info("outside")
        with tracer.start_as_current_span("request") as span:
            ctx = span.get_span_context()
            print(format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))
            log.info("inside", entities=3)
            logging.getLogger("some.library").warning("stdlib line")
        log.debug("filtered out")
    """)
    assert result.returncode == 0, result.stderr
    trace_id, span_id = result.stdout.split()
    lines = json_lines(result.stderr)
    assert [line["event"] for line in lines] == ["outside", "inside", "stdlib line"]
    outside, inside, stdlib = lines
    assert "trace_id" not in outside
    assert inside["trace_id"] == trace_id and inside["span_id"] == span_id
    assert inside["entities"] == 3 and inside["level"] == "info" and "timestamp" in inside
    assert stdlib["trace_id"] == trace_id and stdlib["logger"] == "some.library"
    assert stdlib["level"] == "warning"


def test_console_format_is_readable() -> None:
    result = run("""
        configure_logging(LoggingConfig(format="console", level="debug"))
        structlog.get_logger("t").debug("hello", method="GetOnlineFeatures")
    """)
    assert result.returncode == 0, result.stderr
    assert "hello" in result.stderr and "method=GetOnlineFeatures" in result.stderr
    assert not result.stderr.lstrip().startswith("{")


def test_configuring_twice_keeps_one_handler() -> None:
    result = run("""
        configure_logging(LoggingConfig(format="json"))
        configure_logging(LoggingConfig(format="json"))
        logging.getLogger("x").warning("once")
    """)
    assert result.returncode == 0, result.stderr
    assert [line["event"] for line in json_lines(result.stderr)] == ["once"]


def test_each_line_is_one_write_so_workers_sharing_stderr_never_interleave() -> None:
    """`quiver serve --workers N` runs N processes on one stderr, unbuffered in the image
    (PYTHONUNBUFFERED=1): a line written in two parts (text, then newline) can be cut in
    two by another worker's line, which turns both into invalid JSON (audit lines too)."""
    result = run("""
        import sys

        class Recording:
            def __init__(self):
                self.writes = []
            def write(self, text):
                self.writes.append(text)
                return len(text)
            def flush(self):
                pass
            def isatty(self):
                return False

        recording = Recording()
        sys.stderr = recording
        configure_logging(LoggingConfig(format="json", level="info"))
        structlog.get_logger("quiver.audit").warning("audit", principal="alice")
        logging.getLogger("some.library").warning("stdlib line")
        sys.stderr = sys.__stderr__
        print(repr(recording.writes))
    """)
    assert result.returncode == 0, result.stderr
    writes = ast.literal_eval(result.stdout)
    assert len(writes) == 2, writes
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in writes), writes
