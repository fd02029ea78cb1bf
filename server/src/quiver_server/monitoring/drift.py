"""Drift between a reference and a current `FeatureSummary`: PSI, Jensen-Shannon, null rate.

Numbers are binned on the reference's quantiles: split points at its minimum,
deciles and maximum (duplicates dropped, so a discrete or constant feature
gets fewer bins), giving bins ``(-inf, q0], (q0, q1], ..., (q_max, inf)``; each
side's share of every bin comes from its own KLL sketch (its CDF at the split
points). Values the reference never reached land in the outer bins.

Categories are the union of both sides' tracked items (at most
`MAX_CATEGORIES`, most frequent first) plus "other", the share of values
outside them; each share comes from the frequent-items estimates. A category
the reference never saw has reference share 0.

Shares of 0 are replaced by `EPSILON` before scoring (as Evidently does), so a
bin or category present on one side only gives a large but finite PSI.

- PSI = sum((c - r) * ln(c / r)).
- Jensen-Shannon distance = sqrt(JS divergence), base 2, between 0 and 1.
- Null-rate change = |current null rate - reference null rate|.

Defined results for the edge cases: no reference values -> NO_REFERENCE;
nothing observed in the current window -> NO_CURRENT; one side with no
non-null values (an all-null window) -> distribution scores 0, and the
null-rate check decides.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from quiver import DriftThresholds
from quiver.monitoring.v1 import profile_pb2 as pb
from quiver_server.monitoring.summary import CATEGORICAL, NUMERIC, FeatureSummary

__all__ = [
    "DEFAULT_THRESHOLDS",
    "Distributions",
    "compare",
    "distributions",
    "jensen_shannon",
    "psi",
    "resolve_thresholds",
]

EPSILON = 1e-4
MAX_CATEGORIES = 30
OTHER = "(other)"
# Jensen-Shannon at 0.15: two samples of ~1,000 values from one distribution
# already score up to ~0.1 (sampling noise plus the sketches' rank error).
DEFAULT_THRESHOLDS = DriftThresholds(psi=0.2, jensen_shannon=0.15, null_rate=0.05)
_RANKS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


@dataclass(frozen=True)
class Distributions:
    """Both sides binned alike: labels, and each side's share of every bin."""

    labels: list[str]
    reference: list[float]
    current: list[float]
    edges: list[float] = field(default_factory=list)  # numeric split points


def psi(reference: list[float], current: list[float]) -> float:
    r, c = _smoothed(reference), _smoothed(current)
    return float(np.sum((c - r) * np.log(c / r)))


def jensen_shannon(reference: list[float], current: list[float]) -> float:
    r, c = _smoothed(reference), _smoothed(current)
    m = (r + c) / 2
    divergence = 0.5 * np.sum(r * np.log2(r / m)) + 0.5 * np.sum(c * np.log2(c / m))
    return float(math.sqrt(max(0.0, min(1.0, float(divergence)))))


def _smoothed(shares: list[float]) -> np.ndarray:
    array = np.maximum(np.asarray(shares, dtype=np.float64), EPSILON)
    return np.asarray(array / array.sum(), dtype=np.float64)


def distributions(reference: FeatureSummary, current: FeatureSummary) -> Distributions | None:
    """Both summaries binned the same way, or None when either has no sketched values."""
    if reference.kind == NUMERIC:
        if reference.kll is None or current.kll is None:
            return None
        if reference.kll.is_empty() or current.kll.is_empty():
            return None
        edges = sorted(set(reference.kll.get_quantiles(_RANKS)))
        ref_cdf = [0.0, *reference.kll.get_cdf(edges, inclusive=True)]
        cur_cdf = [0.0, *current.kll.get_cdf(edges, inclusive=True)]
        ref = [max(0.0, b - a) for a, b in itertools.pairwise(ref_cdf)]
        cur = [max(0.0, b - a) for a, b in itertools.pairwise(cur_cdf)]
        labels = [f"<= {_short(edges[0])}"]
        labels += [f"({_short(a)}, {_short(b)}]" for a, b in itertools.pairwise(edges)]
        labels.append(f"> {_short(edges[-1])}")
        return Distributions(labels, ref, cur, edges)
    if reference.kind == CATEGORICAL:
        if not reference.sketched_count or not current.sketched_count:
            return None
        ref_items, cur_items = reference.frequencies(), current.frequencies()
        ref_total, cur_total = float(reference.sketched_count), float(current.sketched_count)
        combined = {
            item: ref_items.get(item, 0.0) / ref_total + cur_items.get(item, 0.0) / cur_total
            for item in {*ref_items, *cur_items}
        }
        chosen = sorted(combined, key=lambda item: (-combined[item], item))[:MAX_CATEGORIES]
        ref = [min(1.0, ref_items.get(item, 0.0) / ref_total) for item in chosen]
        cur = [min(1.0, cur_items.get(item, 0.0) / cur_total) for item in chosen]
        ref.append(max(0.0, 1.0 - sum(ref)))
        cur.append(max(0.0, 1.0 - sum(cur)))
        return Distributions([*chosen, OTHER], ref, cur)
    return None


def resolve_thresholds(*levels: DriftThresholds | None) -> DriftThresholds:
    """The first threshold set of each kind among `levels` (feature, view), then the defaults."""
    chosen = {}
    for name in ("psi", "jensen_shannon", "null_rate"):
        values = [getattr(level, name) for level in levels if level is not None]
        chosen[name] = next((v for v in values if v is not None), getattr(DEFAULT_THRESHOLDS, name))
    return DriftThresholds(**chosen)


def compare(
    view: str,
    reference: FeatureSummary | None,
    current: FeatureSummary | None,
    thresholds: DriftThresholds,
) -> pb.FeatureDrift:
    """One feature's drift result; see the module docstring for the rules."""
    known = current or reference
    name = known.name if known is not None else ""
    result = pb.FeatureDrift(
        feature_view=view, feature=name,
        psi_threshold=thresholds.psi or 0.0,
        jensen_shannon_threshold=thresholds.jensen_shannon or 0.0,
        null_rate_threshold=thresholds.null_rate or 0.0,
    )
    if reference is not None:
        result.kind = reference.kind
        result.reference_count = reference.count
        result.reference_null_rate = reference.null_rate
    if current is not None:
        result.kind = current.kind
        result.current_count = current.count
        result.current_null_rate = current.null_rate
    if reference is None or not reference.count:
        result.status = pb.DRIFT_STATUS_NO_REFERENCE
        return result
    if current is None or not current.count:
        result.status = pb.DRIFT_STATUS_NO_CURRENT
        return result
    binned = distributions(reference, current)
    if binned is not None:
        result.psi = psi(binned.reference, binned.current)
        result.jensen_shannon = jensen_shannon(binned.reference, binned.current)
    if thresholds.psi is not None and result.psi > thresholds.psi:
        result.violations.append("psi")
    if thresholds.jensen_shannon is not None and result.jensen_shannon > thresholds.jensen_shannon:
        result.violations.append("jensen_shannon")
    change = abs(result.current_null_rate - result.reference_null_rate)
    if thresholds.null_rate is not None and change > thresholds.null_rate:
        result.violations.append("null_rate")
    result.status = pb.DRIFT_STATUS_DRIFT if result.violations else pb.DRIFT_STATUS_OK
    return result


def _short(value: float) -> str:
    return f"{value:.4g}"
