"""What `quiver plan` says about changed transforms and on-demand code."""

from __future__ import annotations

from google.protobuf.message import Message

from quiver.registry.v1 import registry_pb2 as pb
from quiver_server.transforms import params


def transform_notes(stored: pb.Registry, old: Message, new: Message) -> str:
    """A note for a changed service or on-demand view; "" when there is nothing to add.

    Args:
        stored: The registry version the plan starts from.
        old: The stored definition.
        new: The definition in the repo.
    """
    if isinstance(old, pb.FeatureService) and isinstance(new, pb.FeatureService):
        return _service_notes(stored, old, new)
    if isinstance(old, pb.OnDemandFeatureView) and isinstance(new, pb.OnDemandFeatureView):
        return _on_demand_notes(stored, old, new)
    return ""


def _service_notes(stored: pb.Registry, old: pb.FeatureService, new: pb.FeatureService) -> str:
    before = {t.feature: t for t in old.transforms}
    after = {t.feature: t for t in new.transforms}
    changes = [f"+{after[f].kind} {f}" for f in after if f not in before]
    changes += [f"-{before[f].kind} {f}" for f in before if f not in after]
    changes += [f"~{after[f].kind} {f}" for f in after if f in before and before[f] != after[f]]
    if not changes:
        return ""
    note = "transforms " + ", ".join(changes)
    current = params.current_version(stored, old)
    if current:
        note += (f"; fitted parameters (version {current}) no longer apply: "
                 f"run `quiver fit {new.name} --spine ...`")
    return note


def _on_demand_notes(
    stored: pb.Registry, old: pb.OnDemandFeatureView, new: pb.OnDemandFeatureView
) -> str:
    if old.function_hash == new.function_hash and old.function == new.function:
        return ""
    note = f"function {new.function} source {old.function_hash[7:19]} -> {new.function_hash[7:19]}"
    readers = sorted(
        s.name for s in stored.feature_services
        if any(t.feature.partition(":")[0] == new.name for t in s.transforms)
        and params.current_version(stored, s)
    )
    if readers:
        note += (f"; fitted parameters of {', '.join(readers)} read its output and no longer "
                 f"apply: fit them again")
    return note
