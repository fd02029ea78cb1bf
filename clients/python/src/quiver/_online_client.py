"""`OnlineClient`: online feature lookups over gRPC."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc

from quiver._convert import encode_columns
from quiver._grpc_errors import from_rpc_error
from quiver._online_response import OnlineResponse, as_list
from quiver.errors import InvalidArgumentError
from quiver.serving.v1 import serving_service_pb2 as pb
from quiver.serving.v1 import serving_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 5.0


class OnlineClient:
    """A connection to a Quiver serving server.

    Args:
        target: ``"host:port"`` of the server.
        timeout: Default deadline of each call, in seconds.
        credentials: TLS credentials; plaintext when None.
        options: Extra gRPC channel options.
        interceptors: Client interceptors (e.g. for tracing).

    Example::

        with OnlineClient("localhost:6566") as client:
            rows = client.get_online_features(
                features=["user_stats:txn_count_7d"], entities={"user_id": [1, 2]}
            ).to_dict()
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = (),
    ) -> None:
        self.target = target
        self.timeout = timeout
        channel = (
            grpc.secure_channel(target, credentials, options=list(options))
            if credentials is not None
            else grpc.insecure_channel(target, options=list(options))
        )
        if interceptors:
            channel = grpc.intercept_channel(channel, *interceptors)
        self._channel = channel
        self._stub = pb_grpc.FeatureServingServiceStub(channel)

    def get_online_features(
        self,
        *,
        entities: Mapping[str, Sequence[Any]],
        features: Sequence[str] | None = None,
        feature_service: str | None = None,
        full_feature_names: bool = False,
        timeout: float | None = None,
    ) -> OnlineResponse:
        """Fetch the latest feature values for the given entities.

        Args:
            entities: Join key name to a column of key values, all the same length.
            features: Feature references, ``"view:feature"``.
            feature_service: Or the name of a feature service.
            full_feature_names: Name columns ``"view__feature"``.
            timeout: Deadline in seconds; the client default when None.

        Raises:
            InvalidArgumentError: bad selection or entity columns (`violations` says where).
            NotFoundError: unknown feature view, feature or feature service.
            UnavailableError: the server or its online store cannot be reached.
            DeadlineExceededError: no answer within the deadline.
        """
        if (features is None) == (feature_service is None):
            raise InvalidArgumentError.for_field(
                "features", "pass either features=[...] or feature_service=..."
            )
        if isinstance(features, str):
            raise InvalidArgumentError.for_field(
                "features", "must be a list of 'view:feature' references, not a string"
            )
        try:
            columns = encode_columns(entities)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError.for_field("entities", str(exc)) from None
        request = pb.GetOnlineFeaturesRequest(entities=columns, full_feature_names=full_feature_names)
        if feature_service is not None:
            request.feature_service = feature_service
        else:
            request.features.refs.extend(features or ())
        try:
            response = self._stub.GetOnlineFeatures(
                request, timeout=self.timeout if timeout is None else timeout
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return OnlineResponse(response, {k: as_list(v) for k, v in entities.items()})

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> OnlineClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
