"""Pins the public surface of the `quiver` package: a change here is an API change."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import quiver
import quiver.convert
import quiver.errors
import quiver.prefetch
import quiver.status
import quiver.tracing
import quiver.transforms
import quiver.types

# Every public module of the client and exactly what it exports. A change here is
# an API change: the server and Flight packages import only these.
PUBLIC = {
    quiver: {
        "Action", "Bool", "Bytes", "DatasetSpine", "DriftThresholds", "Entity", "ErasureResult",
        "FeatureProjection", "FeatureService", "FeatureView", "Field", "Float32", "Float64",
        "Int32", "Int64", "OfflineSpine", "OnDemandFeatureView", "OnlineClient", "OnlineResponse",
        "ParquetSource", "Permission", "PushResult", "PushTarget", "QuiverError", "RequestSource",
        "Resource", "SpineHandle", "String", "Timestamp", "Tls", "TrainingClient",
        "TrainingDataset", "TrainingProgress", "Transform", "ValueType", "__version__",
        "parse_feature_ref", "token_file",
    },
    quiver.transforms: {
        "BUILTIN_KINDS", "CustomTransform", "Transform", "bucketize", "check_import_path",
        "custom", "label_encoder", "log1p", "min_max_scaler", "one_hot_encoder", "robust_scaler",
        "standard_scaler",
    },
    quiver.errors: {
        "DeadlineExceededError", "DefinitionError", "FailedPreconditionError", "FieldViolation",
        "InternalError", "InvalidArgumentError", "NotFoundError", "PermissionDeniedError",
        "QuiverError", "ResourceExhaustedError", "UnauthenticatedError", "UnavailableError",
        "UnimplementedError", "error_for_code",
    },
    quiver.status: {
        "DETAILS_KEY", "RichStatus", "build_status", "decode_status", "encode_status",
        "error_from_status",
        "flight_error_code", "from_flight_error", "from_rpc_error",
    },
    quiver.convert: {
        "DEFAULT_TIMESTAMP_COLUMN", "FIELD_FOR_TYPE", "TYPE_OF_FIELD", "encode_columns",
        "from_values", "infer_type", "pack", "push_target_from_proto", "push_target_to_proto",
        "to_values",
    },
    quiver.types: {
        "Bool", "Bytes", "ErasureResult", "Float32", "Float64", "Int32", "Int64", "PushResult",
        "PushTarget", "String", "Timestamp", "ValueType",
    },
    quiver.tracing: {"FLIGHT_SERVICE", "flight_method", "peer_attributes", "rpc_attributes",
                     "split_target"},
    quiver.prefetch: {"Prefetch"},
}


@pytest.mark.parametrize("module", PUBLIC, ids=lambda m: m.__name__)
def test_exports_are_pinned_exactly(module: ModuleType) -> None:
    assert set(module.__all__) == PUBLIC[module]
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        assert hasattr(module, name), name


def test_server_and_flight_import_only_public_client_modules() -> None:
    root = Path(__file__).resolve().parents[2]
    public = {m.__name__ for m in PUBLIC} | {"quiver.serving.v1", "quiver.registry.v1",
                                            "quiver.flight.v1", "quiver.types.v1", "quiver.rpc.v1",
                                            "quiver.monitoring.v1"}
    for package in (root / "server" / "src", root / "flight" / "src"):
        for path in package.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names
                                               if a.name.startswith("_") and a.name != "__version__"]
                elif isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                else:
                    continue
                for module in modules:
                    if module.split(".")[0] == "quiver":
                        base = module.rsplit(".", 1)[0] if module.endswith("_pb2") or \
                            module.endswith("_pb2_grpc") else module
                        assert base in public, f"{path.relative_to(root)} imports {module}"


@pytest.mark.slow
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
