"""The online storage layout, owned by the registry: where each view's features are stored.

`quiver apply` gives every feature a short storage name ("bin": ``f0``, ``f1``,
... at most 15 characters, as Aerospike requires) recorded in the registry
(`StorageLayout`); names are never handed out again, so values a store still
holds for a removed or retyped feature can never be read as another feature.
Online stores read the layout through `ViewTable` and `storage_name`; they add
only their own limits (reserved names, lengths).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from quiver import FeatureView, ValueType
from quiver.errors import FailedPreconditionError, InvalidArgumentError
from quiver.registry.v1 import registry_pb2 as pb

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class ViewTable:
    """Where and how one feature view is stored online."""

    project: str
    view: FeatureView
    # Feature name -> short storage name (at most 15 characters).
    bin_names: Mapping[str, str]

    @property
    def name(self) -> str:
        return self.view.name


def assign_bins(layout: pb.StorageLayout, view: FeatureView, old: pb.FeatureView | None) -> None:
    """Give every feature a short storage name, stable while its type is unchanged.

    Removed or retyped features lose their name, and names are never handed out
    again, so stale values in a store can never be read as a different feature.
    """
    old_types = {f.name: f.value_type for f in old.features} if old is not None else {}
    current = {f.name: int(f.dtype) for f in view.schema}
    for feature in list(layout.bin_names):
        if current.get(feature) != old_types.get(feature):
            del layout.bin_names[feature]
    for feature in view.feature_names:
        if feature not in layout.bin_names:
            layout.bin_names[feature] = _bin_name(layout.next_bin)
            layout.next_bin += 1


def _bin_name(number: int) -> str:
    text = ""
    while True:
        number, rem = divmod(number, 36)
        text = _DIGITS[rem] + text
        if number == 0:
            return "f" + text


def feature_type(view: FeatureView, feature: str) -> ValueType:
    """The type of `feature`, or InvalidArgumentError naming the view's features."""
    try:
        return view.feature(feature).dtype
    except KeyError:
        raise InvalidArgumentError.for_field(
            "features",
            f"feature view {view.name!r} has no feature {feature!r}; "
            f"it has: {', '.join(view.feature_names)}",
        ) from None


def storage_name(table: ViewTable, feature: str) -> str:
    """The storage name of `feature` in `table`.

    Raises:
        InvalidArgumentError: the view has no such feature.
        FailedPreconditionError: the feature has no storage name yet (apply first).
    """
    try:
        return table.bin_names[feature]
    except KeyError:
        feature_type(table.view, feature)  # an unknown feature gets the clearer error
        raise FailedPreconditionError(
            f"feature view {table.name!r}: feature {feature!r} has no storage name in the "
            f"registry; run `quiver apply`",
            reason="NO_STORAGE_LAYOUT",
        ) from None
