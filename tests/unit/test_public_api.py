"""Pins the public surface of the `quiver` package: a change here is an API change."""

from __future__ import annotations

import subprocess
import sys

import quiver
import quiver.errors

EXPECTED = {
    "Bool", "Bytes", "Entity", "FeatureProjection", "FeatureService", "FeatureView", "Field",
    "Float32", "Float64", "Int32", "Int64", "OnlineClient", "OnlineResponse", "ParquetSource",
    "QuiverError", "String", "Timestamp", "ValueType", "__version__", "parse_feature_ref",
    "TrainingClient", "SpineHandle", "OfflineSpine", "PushResult",
    "OnDemandFeatureView", "RequestSource", "Transform",
}


def test_exports_are_pinned() -> None:
    assert set(quiver.__all__) >= EXPECTED
    for name in quiver.__all__:
        assert hasattr(quiver, name), name


def test_transforms_module_exports() -> None:
    import quiver.transforms

    for name in quiver.transforms.__all__:
        assert hasattr(quiver.transforms, name), name


def test_errors_module_exports() -> None:
    for name in quiver.errors.__all__:
        assert hasattr(quiver.errors, name)


def test_client_imports_without_server_packages() -> None:
    # Production models import only the client: it must not pull server deps.
    code = (
        "import sys, quiver\n"
        "from quiver.serving.v1 import serving_service_pb2_grpc\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('quiver_server', 'quiver_flight', 'pydantic', 'duckdb', 'structlog', 'yaml', 'aerospike')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
