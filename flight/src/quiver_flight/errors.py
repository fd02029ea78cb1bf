"""How failures leave the Flight server: one rich status, bounded, without server paths.

Every Flight method answers a failure with the same `google.rpc.Status` (code,
message, ErrorInfo, BadRequest field violations), built here:

- Most methods raise the matching `pyarrow.flight` error class with the
  serialized status in ``extra_info``; pyarrow sends it as the
  ``grpc-status-details-bin`` trailer (`ErrorPolicy.flight_error`).
- ``get_schema``, and the methods Quiver does not offer (``do_action``,
  ``do_exchange``), cannot: pyarrow (26) does not translate an exception raised
  there, and sends any of them as UNKNOWN with the Python traceback in the
  message. There the status trailer is added through the call context's public
  ``add_trailer``, and the exception raised is a `TrailerStatus` whose Python
  type gives Arrow the gRPC code (INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED;
  UNKNOWN for the rest, with the real code in the trailer) and whose rendering
  carries no traceback (`ErrorPolicy.trailer_error`).

Texts name the server's own directories (offline store, registry, spines) by
role, such as ``<offline store>``, never by path, and hide the registry's file
names; they are made valid UTF-8. The status itself is bounded where it is
built (`quiver_server.echo`), so echoed input never pushes it past a client's
metadata limit; paths are replaced first, so a cut never leaves part of one.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping

from pyarrow import flight

from quiver.errors import FieldViolation, InvalidArgumentError, QuiverError
from quiver_flight.convert import flight_error
from quiver_server.error_policy import as_quiver_error


class ErrorPolicy:
    """Turns what a handler raises into what the client receives.

    Args:
        server_paths: Server directories to hide, each with the name shown
            instead, e.g. ``{"/var/lib/quiver/offline": "<offline store>"}``.
        opaque: Those of them whose file names are hidden too (the registry's
            files are no business of a client).
    """

    def __init__(
        self, server_paths: Mapping[str, str] | None = None, opaque: Iterable[str] = ()
    ) -> None:
        hidden = {os.path.realpath(path) for path in opaque if "://" not in path}
        pairs: dict[str, tuple[str, bool]] = {}
        for path, name in (server_paths or {}).items():
            if not path or "://" in path:
                continue
            whole = os.path.realpath(path) in hidden
            for variant in {path, os.path.abspath(path), os.path.realpath(path)}:
                pairs[variant.rstrip("/") or "/"] = (name, whole)
        # Longest first, so a directory inside another is named by its own name.
        self._paths = [
            (re.compile(re.escape(path) + (r"(/[^\s'\"(),;]*)?" if whole else "")), name)
            for path, (name, whole) in sorted(pairs.items(), key=lambda item: -len(item[0]))
        ]

    def error(self, exc: BaseException, where: str) -> QuiverError:
        """The QuiverError `exc` means for the caller, without server paths."""
        error = as_quiver_error(exc, where, store="offline store")
        return self.redacted(error)

    def redacted(self, error: QuiverError) -> QuiverError:
        """A copy of `error` whose texts are valid UTF-8 and free of server paths."""
        redacted = copy.copy(error)
        redacted.message = self._text(error.message)
        redacted.args = (redacted.message,)
        redacted.metadata = {self._text(k): self._text(v) for k, v in error.metadata.items()}
        if isinstance(error, InvalidArgumentError) and isinstance(redacted, InvalidArgumentError):
            redacted.violations = [
                FieldViolation(self._text(v.field), self._text(v.description))
                for v in error.violations
            ]
        return redacted

    def flight_error(self, exc: BaseException, where: str) -> BaseException:
        """The pyarrow.flight error to raise for `exc` from a method pyarrow translates."""
        if isinstance(exc, flight.FlightError):
            already: BaseException = exc
            return already
        return flight_error(self.error(exc, where))

    def trailer_error(
        self, exc: BaseException, where: str, context: flight.ServerCallContext
    ) -> BaseException:
        """The exception to raise for `exc` from get_schema, do_action or do_exchange.

        Adds the status trailer to the call first (see the module docstring).
        """
        error = self.error(exc, where)
        # The very status the other methods carry in their Flight errors.
        status = bytes(flight_error(error).extra_info)  # type: ignore[attr-defined]
        context.add_trailer("grpc-status-details-bin", status)
        return TrailerStatus.of(error, status)

    def _text(self, text: str) -> str:
        for pattern, name in self._paths:
            text = pattern.sub(name, text)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class TrailerStatus(Exception):
    """A failure whose status already travels as a trailer (see the module docstring).

    Arrow maps the Python type to the gRPC code and renders the exception's
    traceback into the message; a note that cannot be encoded as UTF-8 makes
    that rendering fail, and Arrow then names only the type. ``extra_info``
    holds the status, as on pyarrow's Flight errors, so the server's telemetry
    reads the real code from it.
    """

    _UNENCODABLE_NOTE = "\udcff"

    def __init__(self, message: str, extra_info: bytes) -> None:
        super().__init__(message)
        self.message = message
        self.extra_info = extra_info
        self.add_note(self._UNENCODABLE_NOTE)

    def __str__(self) -> str:
        return self.message

    @staticmethod
    def of(error: QuiverError, status: bytes) -> TrailerStatus:
        cls = _TRAILER_CLASSES.get(error.grpc_code.name, TrailerStatus)
        return cls(f"{error.grpc_code.name}: {error.message}", status)


class InvalidArgumentStatus(TrailerStatus, ValueError):
    """Travels as INVALID_ARGUMENT (Arrow maps ValueError to Invalid)."""


class NotFoundStatus(TrailerStatus, KeyError):
    """Travels as NOT_FOUND (Arrow maps KeyError to KeyError)."""


class UnimplementedStatus(TrailerStatus, NotImplementedError):
    """Travels as UNIMPLEMENTED (Arrow maps NotImplementedError to NotImplemented)."""


_TRAILER_CLASSES: dict[str, type[TrailerStatus]] = {
    "INVALID_ARGUMENT": InvalidArgumentStatus,
    "NOT_FOUND": NotFoundStatus,
    "UNIMPLEMENTED": UnimplementedStatus,
}
