"""On-demand feature views: features computed at request time.

An on-demand view's function, referenced by import path (never pickled),
computes its features from request data (values the caller sends) and stored
features. The serving server runs it for every lookup that asks for one of
its features; the Flight server runs the same function over training sets,
taking request data from spine columns of the same names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from quiver._definitions import (
    FeatureProjection,
    FeatureView,
    Field,
    _check_tags,
    _check_unique,
    check_name,
    project,
)
from quiver.errors import DefinitionError
from quiver.transforms import check_import_path

OnDemandMode = Literal["arrow", "pandas"]
MODES: tuple[OnDemandMode, ...] = ("arrow", "pandas")


@dataclass(frozen=True)
class RequestSource:
    """Values a caller sends with a lookup, declared for on-demand views.

    Online they travel in ``request_data`` (one value per entity); in a
    training set they are spine columns of the same names.

    Args:
        name: Unique name.
        schema: The fields, e.g. ``[Field("amount", Float64)]``.
        description: Free text for people.
    """

    name: str
    schema: tuple[Field, ...]
    description: str = ""

    def __post_init__(self) -> None:
        check_name("request source", self.name)
        object.__setattr__(self, "schema", _schema(f"request source {self.name!r}", self.schema))


class OnDemandFeatureView:
    """Features computed at request time by a Python function.

    Args:
        name: Unique name (shared with feature views: refs are ``"name:feature"``).
        sources: What the function reads: `RequestSource` objects, and feature
            views or projections (``view[["a"]]``) for stored features.
        schema: The features it returns, e.g. ``[Field("amount_ratio", Float64)]``.
        function: Import path ``"module:function"`` of the function; the
            module is looked up in the feature repo first, then installed
            packages. Its source is hashed at `quiver apply`, and servers refuse
            to run different code than what was applied.
        mode: ``"arrow"``: the function receives a ``pyarrow.RecordBatch`` with
            one column per input (named after the request field or feature) and
            returns a RecordBatch, Table or mapping of arrays holding every
            declared feature; ``"pandas"``: a ``pandas.DataFrame`` in and out.
            The function must be row-wise (each output row depends on its input
            row only): online it sees one request's rows, offline a batch.
        description: Free text for people.
        owner: Who answers for it.
        tags: Free-form labels.
    """

    def __init__(
        self,
        *,
        name: str,
        sources: Sequence[RequestSource | FeatureView | FeatureProjection],
        schema: Sequence[Field],
        function: str,
        mode: OnDemandMode = "arrow",
        description: str = "",
        owner: str = "",
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.name = check_name("on-demand feature view", name)
        where = f"on-demand feature view {name!r}"
        inputs: list[FeatureProjection] = []
        requests: list[RequestSource] = []
        for source in sources:
            if isinstance(source, RequestSource):
                requests.append(source)
            elif isinstance(source, FeatureView):
                inputs.append(FeatureProjection(source.name, tuple(source.feature_names)))
            elif isinstance(source, FeatureProjection):
                inputs.append(source)
            else:
                raise DefinitionError(
                    f"{where}: sources must be RequestSource, FeatureView or projection "
                    f"(view[['a']]), got {source!r}"
                )
        if not inputs and not requests:
            raise DefinitionError(f"{where}: sources must name at least one input")
        self.feature_inputs = tuple(inputs)
        self.request_sources = tuple(requests)
        _check_unique(f"{where} inputs", self.input_names)
        self.schema = _schema(where, schema)
        self.function = check_import_path(f"{where} function", function)
        if mode not in MODES:
            raise DefinitionError(f"{where}: mode {mode!r} is unknown; allowed: arrow, pandas")
        self.mode: OnDemandMode = mode
        self.description = description
        self.owner = owner
        self.tags = _check_tags(where, tags or {})

    @property
    def input_names(self) -> list[str]:
        """Column names the function receives: request fields, then stored features."""
        names = [f.name for source in self.request_sources for f in source.schema]
        names.extend(name for p in self.feature_inputs for name in p.features)
        return names

    @property
    def request_fields(self) -> list[Field]:
        return [f for source in self.request_sources for f in source.schema]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.schema]

    def feature(self, name: str) -> Field:
        for feature in self.schema:
            if feature.name == name:
                return feature
        raise KeyError(name)

    def __getitem__(self, features: Sequence[str]) -> FeatureProjection:
        """Select some features for a feature service: ``view[["a"]]``."""
        return project("on-demand feature view", self.name, self.feature_names, features)

    def _key(self) -> tuple[object, ...]:
        return (
            self.name, self.feature_inputs, self.request_sources, self.schema, self.function,
            self.mode, self.description, self.owner, tuple(sorted(self.tags.items())),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OnDemandFeatureView):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"OnDemandFeatureView(name={self.name!r}, features={self.feature_names!r})"


def _schema(where: str, fields: Sequence[Field]) -> tuple[Field, ...]:
    """`fields` if they are at least one Field, with unique names, else DefinitionError."""
    declared = tuple(fields)
    if not declared:
        raise DefinitionError(f"{where}: schema must declare at least one field")
    for item in declared:
        if not isinstance(item, Field):
            raise DefinitionError(f"{where}: schema must hold Field objects, got {item!r}")
    _check_unique(f"{where} fields", [f.name for f in declared])
    return declared
