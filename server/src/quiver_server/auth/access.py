"""Enforcing the policy for the current call, where a request's features are resolved.

Servicers and the Flight server call an `AccessControl` after they resolve
what a request touches (the features a service selects, the view a push
targets, the views a delete removes from, a ticket's features). It takes the
principal from the call (`quiver_server.auth.principal.current_call`) and
raises `PermissionDeniedError`, records the decision for the audit line, and
is a no-op when authentication is off. gRPC and Flight use this one module,
so a principal gets the same answer on both.

Denials name the action and the feature, view or service denied, but only
names the caller gave or may DESCRIBE: a request for a feature service the
caller may not fully read names the service, not the views behind it; a name
that does not exist is denied exactly like one that exists but is not
allowed, unless the caller may DESCRIBE it (then it is NOT_FOUND as usual).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from quiver import Action, FeatureView
from quiver.errors import NotFoundError, PermissionDeniedError, UnauthenticatedError
from quiver_server.auth.policy import Policy
from quiver_server.auth.principal import CallAccess, Principal, current_call
from quiver_server.echo import clip
from quiver_server.registry.snapshot import FeatureRef, Snapshot

_MAX_DECISIONS = 16_384
_POLICIES_KEPT = 4
_ALLOWED = None


def _denied(principal: Principal, action: Action, what: str, **metadata: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"principal {principal.subject!r} may not {action.name} {what}: no permission allows it",
        reason="PERMISSION_DENIED",
        metadata={"action": action.name, "principal": principal.subject, **metadata},
    )


class AccessControl:
    """The registry's permissions, enforced for the current call."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._policies: dict[int, Policy] = {}
        # (principal, version, action, selection) -> None (allowed) or the denial's
        # (message, metadata); a lookup then costs one dict probe.
        self._decisions: dict[tuple[Any, ...], tuple[str, dict[str, str]] | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def disabled(cls) -> AccessControl:
        return cls(enabled=False)

    # --- plumbing -------------------------------------------------------------------

    def call(self) -> CallAccess | None:
        """The current call, None when auth is off.

        Raises:
            UnauthenticatedError: auth is on but nothing authenticated this call
                (fail closed rather than allow).
        """
        if not self.enabled:
            return None
        call = current_call()
        if call is None:
            raise UnauthenticatedError("this call was not authenticated", reason="CREDENTIALS_MISSING")
        return call

    def policy(self, snapshot: Snapshot) -> Policy:
        """The policy of a registry version, compiled once."""
        policy = self._policies.get(snapshot.version)
        if policy is None:
            policy = Policy(snapshot.project, snapshot.permissions, snapshot.feature_services)
            with self._lock:
                while len(self._policies) >= _POLICIES_KEPT:
                    self._policies.pop(next(iter(self._policies)))
                self._policies[snapshot.version] = policy
        return policy

    def _remember(self, key: tuple[Any, ...], decision: tuple[str, dict[str, str]] | None) -> None:
        with self._lock:
            if len(self._decisions) >= _MAX_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = decision

    @staticmethod
    def _deny(call: CallAccess, action: Action, resources: list[str],
              message: str, metadata: dict[str, str]) -> PermissionDeniedError:
        if action not in call.actions:
            call.actions = (*call.actions, action)
        call.resources = resources
        call.denied = message
        return PermissionDeniedError(message, reason="PERMISSION_DENIED", metadata=metadata)

    @staticmethod
    def _audit(call: CallAccess, action: Action, resources: list[str]) -> None:
        if action not in call.actions:
            call.actions = (*call.actions, action)
        call.resources = resources
        call.audited = True

    # --- data actions -----------------------------------------------------------------

    def check_features(
        self,
        snapshot: Snapshot,
        action: Action,
        refs: Sequence[FeatureRef],
        *,
        service: str = "",
        requested: Sequence[str] = (),
    ) -> None:
        """Allow `action` on every resolved feature, or raise PermissionDeniedError.

        Args:
            service: The feature service the request named, if it named one.
            requested: The feature references the request named (the decision
                is cached under them and `service`).
        """
        call = self.call()
        if call is None:
            return
        key = (call.principal, snapshot.version, action, service, tuple(requested))
        try:
            decision = self._decisions[key]
        except KeyError:
            decision = self._decide_features(
                call.principal, snapshot, action, refs, service, requested
            )
            self._remember(key, decision)
        if decision is not None:
            resources = ([f"feature_service:{service}"] if service
                         else sorted({f"feature_view:{r.view.name}" for r in refs}))
            raise self._deny(call, action, resources, *decision)

    def _decide_features(
        self, principal: Principal, snapshot: Snapshot, action: Action,
        refs: Sequence[FeatureRef], service: str, requested: Sequence[str] = (),
    ) -> tuple[str, dict[str, str]] | None:
        policy = self.policy(snapshot)
        for ref in refs:
            if policy.allows_feature(principal, action, ref.view, ref.feature):
                continue
            if not service:
                shown = ref.ref
                if requested and shown not in requested:
                    # Read on the caller's behalf (an on-demand view's input): name what
                    # the caller asked for, never a stored feature it may not know of.
                    shown = clip(next(
                        (r for r in requested if not self._allows_ref(
                            policy, principal, action, snapshot, r)),
                        requested[0],
                    ))
                error = _denied(principal, action, f"feature {shown!r}", feature=shown)
            elif self._may_name(policy, principal, snapshot, ref.view.name, service):
                what = f"feature {ref.ref!r} of feature service {service!r}"
                error = _denied(principal, action, what, feature=ref.ref)
            else:
                error = _denied(principal, action, f"every feature of feature service {service!r}",
                                feature_service=service)
            return error.message, error.metadata
        return _ALLOWED

    def _may_name(self, policy: Policy, principal: Principal, snapshot: Snapshot,
                  view: str, service: str) -> bool:
        return policy.allows_view(
            principal, Action.DESCRIBE, view, snapshot.feature_views.get(view)
        ) or policy.allows_service(
            principal, Action.DESCRIBE, service, snapshot.feature_services.get(service)
        )

    def check_views(self, snapshot: Snapshot, actions: Sequence[Action],
                    views: Sequence[FeatureView], *, named: bool = True,
                    what: str = "") -> None:
        """Allow `actions` on every feature of `views` (a push, a delete), or raise.

        The call is audited either way. `named` says whether the caller named
        the views; if not (a delete of every view keyed by some entities),
        only views it may DESCRIBE are named in a denial, the rest as `what`.
        """
        call = self.call()
        if call is None:
            return
        policy = self.policy(snapshot)
        resources = [f"feature_view:{v.name}" for v in views]
        for action in actions:
            self._audit(call, action, resources)
            for view in views:
                for feature in view.schema:
                    if policy.allows_feature(call.principal, action, view, feature):
                        continue
                    if named or policy.allows_view(call.principal, Action.DESCRIBE, view.name, view):
                        error = _denied(call.principal, action, f"feature view {view.name!r}",
                                        feature_view=view.name)
                    else:
                        error = _denied(call.principal, action, what)
                    raise self._deny(call, action, resources, error.message, error.metadata)

    def check_project(self, snapshot: Snapshot, action: Action, what: str, **metadata: str) -> None:
        """Allow `action` only to principals granted it on the whole project."""
        call = self.call()
        if call is None:
            return
        if not self.policy(snapshot).allows_project(call.principal, action):
            error = _denied(call.principal, action, what, **metadata)
            raise self._deny(call, action, [f"project:{snapshot.project}"], error.message, error.metadata)

    def check_any(self, snapshot: Snapshot, action: Action, what: str, resource: str) -> None:
        """Allow `action` to principals granted it on anything (uploading a spine); audited."""
        call = self.call()
        if call is None:
            return
        self._audit(call, action, [resource])
        if not self.policy(snapshot).allows_any(call.principal, action):
            error = _denied(call.principal, action, what)
            raise self._deny(call, action, [resource], error.message, error.metadata)

    def record(self, resources: list[str]) -> None:
        """Replace the audited resources of the current call (e.g. once a spine has an id)."""
        call = current_call() if self.enabled else None
        if call is not None:
            call.resources = resources

    # --- names that do not resolve ------------------------------------------------------

    def unknown(
        self,
        error: NotFoundError,
        snapshot: Snapshot,
        action: Action,
        *,
        requested: Sequence[str] = (),
        service: str = "",
    ) -> Exception:
        """What to raise for a NotFoundError from resolving the caller's names.

        The NotFoundError itself if the caller may DESCRIBE what it names (it
        may list those names anyway); otherwise the denial an existing but
        forbidden name would get, so existence does not leak.
        """
        call = self.call()
        if call is None:
            return error
        policy = self.policy(snapshot)
        principal = call.principal
        view = error.metadata.get("feature_view")
        missing_service = error.metadata.get("feature_service")
        if missing_service is not None:
            if policy.allows_service(principal, Action.DESCRIBE, missing_service,
                                     snapshot.feature_services.get(missing_service)):
                return error
            denial = _denied(principal, action, f"every feature of feature service {missing_service!r}",
                             feature_service=missing_service)
            return self._deny(call, action, [f"feature_service:{missing_service}"],
                              denial.message, denial.metadata)
        if requested:
            refused = self._first_refused(call, policy, snapshot, action, requested)
            if refused is not None:
                return refused
        if view is None or policy.allows_view(principal, Action.DESCRIBE, view,
                                              snapshot.feature_views.get(view)):
            return error
        feature = error.metadata.get("feature")
        ref = f"{view}:{feature}" if feature else next(
            (r for r in requested if r.partition(":")[0] == view), None
        )
        denial = (_denied(principal, action, f"feature {ref!r}", feature=ref) if ref
                  else _denied(principal, action, f"feature view {view!r}", feature_view=view))
        return self._deny(call, action, [f"feature_view:{view}"], denial.message, denial.metadata)

    def _first_refused(self, call: CallAccess, policy: Policy, snapshot: Snapshot,
                       action: Action, requested: Sequence[str]) -> Exception | None:
        """The answer for the first requested feature that is not both existing and allowed.

        NOT_FOUND when the caller may DESCRIBE its view, else the denial an existing but
        forbidden feature gets. Taken in request order, as `check_features` does, so the
        answer (its status and the name it gives) never depends on whether a name the
        caller may not describe exists: resolving stops at the first unknown name, and
        without this a describable typo placed after a hidden name would answer NOT_FOUND
        exactly when the hidden name exists.
        """
        principal = call.principal
        for ref in requested:
            view_name, _, feature_name = ref.partition(":")
            allowed, exists, describable = self._judge_ref(
                policy, principal, action, snapshot, view_name, feature_name
            )
            if allowed:
                continue
            if not exists and describable:
                try:
                    snapshot.resolve_any(features=[ref])
                except NotFoundError as missing:
                    return missing
            shown = clip(ref)
            denial = _denied(principal, action, f"feature {shown!r}", feature=shown)
            return self._deny(call, action, [f"feature_view:{clip(view_name)}"],
                              denial.message, denial.metadata)
        return None

    @classmethod
    def _allows_ref(cls, policy: Policy, principal: Principal, action: Action,
                    snapshot: Snapshot, ref: str) -> bool:
        view_name, _, feature_name = ref.partition(":")
        return cls._judge_ref(policy, principal, action, snapshot, view_name, feature_name)[0]

    @staticmethod
    def _judge_ref(policy: Policy, principal: Principal, action: Action, snapshot: Snapshot,
                   view_name: str, feature_name: str) -> tuple[bool, bool, bool]:
        """(allowed, exists, describable) of one requested ``view:feature``.

        An on-demand view's feature is allowed when every stored feature it reads is
        (what `check_features` checks for it), and its view is described to whoever may
        describe every view it reads, as the registry service does.
        """
        on_demand = snapshot.on_demand_views.get(view_name)
        if on_demand is not None:
            exists = feature_name in on_demand.feature_names
            inputs = [(p.view, name) for p in on_demand.feature_inputs for name in p.features]
            allowed = exists and all(
                (view := snapshot.feature_views.get(v)) is not None
                and any(f.name == name for f in view.schema)
                and policy.allows_feature(principal, action, view, view.feature(name))
                for v, name in inputs
            )
            sources = {v for v, _ in inputs}
            describable = (
                all(policy.allows_view(principal, Action.DESCRIBE, v, snapshot.feature_views.get(v))
                    for v in sources)
                if sources else policy.allows_project(principal, Action.DESCRIBE)
            )
            return allowed, exists, describable
        view = snapshot.feature_views.get(view_name)
        feature = None
        if view is not None:
            try:
                feature = view.feature(feature_name)
            except KeyError:
                feature = None
        if view is not None and feature is not None:
            return policy.allows_feature(principal, action, view, feature), True, False
        return False, False, policy.allows_view(principal, Action.DESCRIBE, view_name, view)

    # --- registry reads -----------------------------------------------------------------

    def may_describe(self, snapshot: Snapshot, kind: str, name: str) -> bool:
        """May the caller DESCRIBE the named object (kind: feature_view,
        feature_service, entity, on_demand_feature_view or project)? Always True
        when auth is off."""
        call = self.call()
        if call is None:
            return True
        policy = self.policy(snapshot)
        principal = call.principal
        if kind == "feature_view":
            return policy.allows_view(principal, Action.DESCRIBE, name, snapshot.feature_views.get(name))
        if kind == "feature_service":
            return policy.allows_service(principal, Action.DESCRIBE, name,
                                         snapshot.feature_services.get(name))
        if kind == "entity":
            entity = snapshot.entities.get(name)
            if entity is None:
                # As for views: only a grant on the whole project covers a name that
                # does not exist, and then it is NOT_FOUND, as without auth.
                return policy.allows_project(principal, Action.DESCRIBE)
            return policy.allows_entity(
                principal, Action.DESCRIBE, entity, snapshot.feature_views.values()
            )
        if kind == "on_demand_feature_view":
            on_demand = snapshot.on_demand_views.get(name)
            sources = {p.view for p in on_demand.feature_inputs} if on_demand is not None else set()
            if not sources:
                # A name that does not exist, or a view of request data only: the project's.
                return policy.allows_project(principal, Action.DESCRIBE)
            # Described to whoever may describe every view it reads.
            return all(policy.allows_view(principal, Action.DESCRIBE, v, snapshot.feature_views.get(v))
                       for v in sources)
        # The project: whoever may describe anything in it may know its name.
        return policy.allows_any(principal, Action.DESCRIBE)

    def check_describe(self, snapshot: Snapshot, kind: str, name: str) -> None:
        """Allow DESCRIBE of one named object (whether it exists or not), or raise."""
        if self.may_describe(snapshot, kind, name):
            return
        call = self.call()
        assert call is not None
        label = kind.replace("_", " ")
        error = _denied(call.principal, Action.DESCRIBE, f"{label} {name!r}", **{kind: name})
        raise self._deny(call, Action.DESCRIBE, [f"{kind}:{name}"], error.message, error.metadata)
