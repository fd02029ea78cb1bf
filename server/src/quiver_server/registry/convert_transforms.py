"""Conversion of on-demand views, transforms and fitted parameters to registry messages.

Function hashes are not part of the SDK objects (they are computed by `quiver
apply` from the deployed source), so the `*_to_proto` functions take them as a
map from import path to ``"sha256:<hex>"``.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

from quiver import OnDemandFeatureView, RequestSource, ValueType
from quiver.convert import FIELD_FOR_TYPE, from_values
from quiver.registry.v1 import registry_pb2 as pb
from quiver.transforms import CustomTransform, Transform
from quiver.types.v1 import value_pb2
from quiver_server.registry.convert import field_from_proto, field_to_proto

Hashes = Mapping[str, str]
_MODES = {"arrow": pb.ON_DEMAND_MODE_ARROW, "pandas": pb.ON_DEMAND_MODE_PANDAS}
_MODE_NAMES = {number: name for name, number in _MODES.items()}


def array_to_values(array: pa.Array) -> value_pb2.Values:
    """A null-free Arrow array as a typed `Values` column."""
    value_type = ValueType.from_arrow(array.type)
    assert value_type is not None, array.type
    out = value_pb2.Values()
    getattr(out, FIELD_FOR_TYPE[value_type]).values.extend(array.to_pylist())
    return out


def values_to_array(values: value_pb2.Values) -> pa.Array:
    value_type, data = from_values(values)
    if value_type is None:
        return pa.array([], pa.null())
    return pa.array(list(data), value_type.arrow_type)


def params_to_proto(params: Mapping[str, pa.Array]) -> dict[str, value_pb2.Values]:
    return {name: array_to_values(array) for name, array in params.items()}


def params_from_proto(params: Mapping[str, value_pb2.Values]) -> dict[str, pa.Array]:
    return {name: values_to_array(values) for name, values in params.items()}


def request_source_to_proto(source: RequestSource) -> pb.RequestSource:
    return pb.RequestSource(
        name=source.name, schema=[field_to_proto(f) for f in source.schema],
        description=source.description,
    )


def on_demand_view_to_proto(view: OnDemandFeatureView, hashes: Hashes) -> pb.OnDemandFeatureView:
    return pb.OnDemandFeatureView(
        name=view.name,
        feature_inputs=[
            pb.FeatureProjection(feature_view=p.view, features=list(p.features))
            for p in view.feature_inputs
        ],
        request_sources=[request_source_to_proto(s) for s in view.request_sources],
        features=[field_to_proto(f) for f in view.schema],
        function=view.function,
        mode=_MODES[view.mode],
        function_hash=hashes.get(view.function, ""),
        description=view.description,
        owner=view.owner,
        tags=dict(view.tags),
    )


def on_demand_view_from_proto(p: pb.OnDemandFeatureView) -> OnDemandFeatureView:
    from quiver import FeatureProjection

    sources: list[RequestSource | FeatureProjection] = [
        RequestSource(s.name, tuple(field_from_proto(f) for f in s.schema), s.description)
        for s in p.request_sources
    ]
    sources.extend(FeatureProjection(i.feature_view, tuple(i.features)) for i in p.feature_inputs)
    return OnDemandFeatureView(
        name=p.name,
        sources=sources,
        schema=[field_from_proto(f) for f in p.features],
        function=p.function,
        mode=_MODE_NAMES.get(p.mode, "arrow"),  # type: ignore[arg-type]
        description=p.description,
        owner=p.owner,
        tags=dict(p.tags),
    )


def transform_to_proto(transform: Transform, hashes: Hashes) -> pb.Transform:
    out = pb.Transform(feature=transform.feature, kind=transform.kind)
    if transform.boundaries:
        out.options["boundaries"].double_values.values.extend(transform.boundaries)
    if transform.num_buckets:
        out.options["num_buckets"].int64_values.values.append(transform.num_buckets)
    spec = transform.custom
    if spec is not None:
        out.custom.CopyFrom(pb.CustomTransform(
            function=spec.function,
            function_hash=hashes.get(spec.function, ""),
            fit=spec.fit or "",
            fit_hash=hashes.get(spec.fit, "") if spec.fit else "",
            parameters={name: int(t) for name, t in spec.parameters.items()},  # type: ignore[misc]
            output_type=int(spec.output),  # type: ignore[arg-type]
            values={
                name: array_to_values(pa.array([value], spec.parameters[name].arrow_type))
                for name, value in spec.values.items()
            },
        ))
    return out


def transform_from_proto(p: pb.Transform) -> Transform:
    custom = None
    if p.HasField("custom"):
        c = p.custom
        parameters = {name: ValueType(t) for name, t in c.parameters.items()}
        custom = CustomTransform(
            function=c.function,
            output=ValueType(c.output_type),
            parameters=parameters,
            fit=c.fit or None,
            values={name: values_to_array(v)[0].as_py() for name, v in c.values.items()},
        )
    boundaries = tuple(p.options["boundaries"].double_values.values) if "boundaries" in p.options else ()
    buckets = p.options["num_buckets"].int64_values.values if "num_buckets" in p.options else []
    return Transform(
        p.feature, p.kind, boundaries=boundaries, num_buckets=int(buckets[0]) if buckets else 0,
        custom=custom,
    )


def function_hashes(proto: pb.Registry) -> dict[str, str]:
    """Import path to applied source hash, for every function a registry version names."""
    hashes = {v.function: v.function_hash for v in proto.on_demand_feature_views}
    for service in proto.feature_services:
        for t in service.transforms:
            if t.HasField("custom"):
                hashes[t.custom.function] = t.custom.function_hash
                if t.custom.fit:
                    hashes[t.custom.fit] = t.custom.fit_hash
    return hashes
