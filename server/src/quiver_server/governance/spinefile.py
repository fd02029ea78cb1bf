"""Kept spines of training datasets: Arrow IPC files under ``_datasets/``.

A training dataset keeps its own copy of the spine, so it can be pulled again
long after the uploaded spine expired. The copy is written under a hidden
temporary name, flushed and moved into place; its SHA-256 is recorded with the
dataset and checked before the dataset is pulled again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from quiver_server.durable import fsync_directory, fsync_file
from quiver_server.governance.paths import DATASET_SPINES
from quiver_server.offline.source import filesystem_and_path, resolve_path

_CHUNK = 1 << 20


@dataclass(frozen=True)
class KeptFile:
    """Where a kept spine went and what it holds."""

    path: str  # relative to the offline store root
    sha256: str
    rows: int


def new_spine_path(dataset: str) -> str:
    """A fresh relative path for a kept spine of `dataset`."""
    return posixpath.join(DATASET_SPINES, dataset, f"{secrets.token_hex(16)}.arrow")


def locate(offline_root: str, relative: str) -> tuple[pafs.FileSystem, str]:
    return filesystem_and_path(resolve_path(offline_root, relative))


def write_spine(
    offline_root: str, relative: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]
) -> KeptFile:
    """Write `batches` as the kept spine at `relative` (replacing it atomically)."""
    fs, path = locate(offline_root, relative)
    directory = posixpath.dirname(path)
    fs.create_dir(directory, recursive=True)
    temp = posixpath.join(directory, f".tmp-{secrets.token_hex(8)}.arrow")
    rows = 0
    try:
        with fs.open_output_stream(temp) as sink, ipc.new_file(sink, schema) as writer:
            for batch in batches:
                rows += batch.num_rows
                writer.write_batch(batch)
        local = isinstance(fs, pafs.LocalFileSystem)
        if local:
            fsync_file(temp)
            os.replace(temp, path)
            fsync_directory(directory)
        else:
            fs.move(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(temp)
        raise
    return KeptFile(relative, file_sha256(fs, path), rows)


def file_sha256(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while True:
            chunk = stream.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def read_spine(offline_root: str, relative: str) -> pa.Table:
    """The whole kept spine (erasure rewrites it; pulls read it by range instead)."""
    fs, path = locate(offline_root, relative)
    with fs.open_input_file(path) as source:
        return ipc.open_file(source).read_all()
