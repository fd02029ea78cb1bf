"""Open the online store a `QuiverConfig` names."""

from __future__ import annotations

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

        return SqliteOnlineStore(config.resolve(store_config.path))
    if isinstance(store_config, AerospikeOnlineStoreConfig):
        # Imported here so SQLite users never load the Aerospike client library.
        from quiver_server.online.aerospike import AerospikeOnlineStore

        return AerospikeOnlineStore(store_config)
    raise ValueError(f"unknown online store type {store_config!r}")  # pragma: no cover
