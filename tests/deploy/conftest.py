"""Fixtures of the deployment tests (helpers live in helmkit.py)."""

from __future__ import annotations

import pytest

from .helmkit import VALUE_SETS, Rendered, render


@pytest.fixture(params=sorted(VALUE_SETS), scope="module")
def rendered(request: pytest.FixtureRequest) -> Rendered:
    """The chart rendered with each named value set."""
    return render(VALUE_SETS[request.param])
