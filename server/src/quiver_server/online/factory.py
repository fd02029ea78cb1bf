"""Open the online store a `QuiverConfig` names."""

from __future__ import annotations

import os

from quiver_server.config import (
    AerospikeOnlineStoreConfig,
    QuiverConfig,
    SqliteOnlineStoreConfig,
)
from quiver_server.online.base import OnlineStore


def open_online_store(config: QuiverConfig) -> OnlineStore:
    """The online store of `config.online_store`, connected.

    Raises:
        UnavailableError: the store cannot be opened or reached.
    """
    store_config = config.online_store
    if isinstance(store_config, SqliteOnlineStoreConfig):
        from quiver_server.online.sqlite import SqliteOnlineStore

        # Errors name the file as quiver.yaml does (relative to the repo), since
        # servers pass them to their callers.
        configured = store_config.path
        name = os.path.basename(configured) if os.path.isabs(configured) else configured
        return SqliteOnlineStore(config.resolve(configured), name=name)
    if isinstance(store_config, AerospikeOnlineStoreConfig):
        # Imported here so SQLite users never load the Aerospike client library.
        from quiver_server.online.aerospike import AerospikeOnlineStore

        return AerospikeOnlineStore(store_config)
    raise ValueError(f"unknown online store type {store_config!r}")  # pragma: no cover
