"""gRPC server reflection under both service names tools use.

grpcio-reflection implements only ``grpc.reflection.v1alpha.ServerReflection``;
current tools (grpcurl, Postman, grpc-java's client) ask for
``grpc.reflection.v1.ServerReflection`` first. The v1 protocol is the v1alpha
one under a new package name (same messages, same field numbers), so one
servicer answers both: the v1 method decodes and encodes with the v1alpha
message classes, and a copy of the v1alpha file descriptor renamed to
``grpc.reflection.v1`` is added to the pool so that v1 can describe itself.
When grpcio-reflection ships a v1 module, it is used instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE = reflection.SERVICE_NAME
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_METHOD = "ServerReflectionInfo"


def enable_reflection(service_names: Iterable[str], server: grpc.Server) -> None:
    """Register reflection v1 and v1alpha on `server`, listing `service_names` and both."""
    names = (*service_names, V1_SERVICE, V1ALPHA_SERVICE)
    try:  # a grpcio-reflection that has its own v1
        native = importlib.import_module("grpc_reflection.v1.reflection")
    except ImportError:
        native = None
    if native is not None:  # pragma: no cover - depends on the installed version
        native.enable_server_reflection(names, server)
        reflection.enable_server_reflection(names, server)
        return
    _add_v1_descriptor(descriptor_pool.Default())
    servicer = reflection.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {_METHOD: handler}),)
    )


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Put `grpc/reflection/v1/reflection.proto` in `pool` (once), made from v1alpha's."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    old_package = file.package
    file.name = _V1_FILE
    file.package = "grpc.reflection.v1"
    old_prefix, new_prefix = f".{old_package}.", f".{file.package}."
    for message in file.message_type:
        for field in message.field:
            if field.type_name.startswith(old_prefix):
                field.type_name = new_prefix + field.type_name[len(old_prefix):]
    for service in file.service:
        for method in service.method:
            method.input_type = new_prefix + method.input_type[len(old_prefix):]
            method.output_type = new_prefix + method.output_type[len(old_prefix):]
    file.ClearField("options")
    pool.AddSerializedFile(file.SerializeToString())
