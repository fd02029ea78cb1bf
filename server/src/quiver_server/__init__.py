"""Quiver server: registry storage, online stores, materialization and gRPC serving."""

from __future__ import annotations

__all__: list[str] = []
