"""Quiver: feature definitions and clients for online serving and training sets."""

from __future__ import annotations

from quiver._credentials import Tls, token_file
from quiver._definitions import (
    DriftThresholds,
    Entity,
    FeatureProjection,
    FeatureService,
    FeatureView,
    Field,
    ParquetSource,
    parse_feature_ref,
)
from quiver._on_demand import OnDemandFeatureView, RequestSource
from quiver._online_client import OnlineClient
from quiver._online_response import OnlineResponse
from quiver._permissions import Action, Permission, Resource
from quiver._training_client import (
    DatasetSpine,
    OfflineSpine,
    SpineHandle,
    TrainingClient,
    TrainingDataset,
    TrainingProgress,
)
from quiver.errors import QuiverError
from quiver.transforms import Transform
from quiver.types import (
    Bool,
    Bytes,
    ErasureResult,
    Float32,
    Float64,
    Int32,
    Int64,
    PushResult,
    PushTarget,
    String,
    Timestamp,
    ValueType,
)

__version__ = "0.1.0"

__all__ = [
    "Action",
    "Bool",
    "Bytes",
    "DatasetSpine",
    "DriftThresholds",
    "Entity",
    "ErasureResult",
    "FeatureProjection",
    "FeatureService",
    "FeatureView",
    "Field",
    "Float32",
    "Float64",
    "Int32",
    "Int64",
    "OfflineSpine",
    "OnDemandFeatureView",
    "OnlineClient",
    "OnlineResponse",
    "ParquetSource",
    "Permission",
    "PushResult",
    "PushTarget",
    "QuiverError",
    "RequestSource",
    "Resource",
    "SpineHandle",
    "String",
    "Timestamp",
    "Tls",
    "TrainingClient",
    "TrainingDataset",
    "TrainingProgress",
    "Transform",
    "ValueType",
    "__version__",
    "parse_feature_ref",
    "token_file",
]
