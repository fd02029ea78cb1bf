"""Transforms in the feature repo: apply-time checks, plan, `quiver fit` and `quiver transforms`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from transform_repo import DEFINITIONS, FUNCTIONS, spine, write_history, write_repo

from quiver.errors import DefinitionError, FailedPreconditionError
from quiver_server.cli import main
from quiver_server.config import load_config
from quiver_server.registry.store import RegistryStore
from quiver_server.repo import apply, plan
from quiver_server.transforms.functions import FunctionLoader, source_hash

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = write_repo(tmp_path / "repo")
    event = NOW - timedelta(hours=1)
    nums = [{"user_id": u, "event_timestamp": event, "created": event, "x_float": float(u),
             "x_int": u, "x_f32": float(u), "cat": "ab"[u % 2], "code": u, "flag": True}
            for u in (1, 2, 3)]
    write_history(path, nums, [{"user_id": 1, "event_timestamp": event, "y": 1.0}])
    return path


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize(("old", "new", "message"), [
    ('function="fns:arrow_features"', 'function="fns:nope"',
     "features.py: on-demand feature view 'arrow_odfv': cannot import 'fns:nope' \\(AttributeError"),
    ('function="fns:arrow_features"', 'function="pyarrow:__version__"',
     "cannot import 'pyarrow:__version__' \\(TypeError: pyarrow:__version__ is a str"),
    ('T.label_encoder("nums:cat")', 'T.standard_scaler("nums:flag")',
     "feature service 'everything': standard_scaler cannot read 'nums:flag' of type bool"),
    ('T.log1p("arrow_odfv:ratio")', 'T.log1p("arrow_odfv:nope")',
     "transform log1p reads 'arrow_odfv:nope', which the service does not select"),
    ('sources=[txn, nums[["x_float", "x_int"]]]', 'sources=[txn, "nums:x_float"]',
     "sources must be RequestSource, FeatureView or projection"),
    ('name="pandas_odfv",', 'name="nums",', "a feature view is called 'nums' too"),
    ('fit="fns:fit_clip"', 'fit="missing_module:fit"',
     "custom transform of 'pandas_odfv:shifted': cannot import 'missing_module:fit'"),
])
def test_apply_refuses_bad_transformations(repo: Path, old: str, new: str, message: str) -> None:
    rewrite(repo / "features.py", old, new)
    config = load_config(repo, env={})
    with pytest.raises(DefinitionError, match=message):
        apply(config)
    assert RegistryStore(config.registry_path).versions() == []


def test_plan_shows_transform_and_code_changes(repo: Path) -> None:
    config = load_config(repo, env={})
    first = plan(config).render()
    assert "+ on_demand_feature_view arrow_odfv" in first and "+ feature_service everything" in first
    apply(config)
    rewrite(repo / "features.py", 'T.min_max_scaler("ages:y"),', 'T.robust_scaler("ages:y"),')
    rewrite(repo / "fns.py", "frame[\"y\"].fillna(0.0)", "frame[\"y\"].fillna(1.0)")
    rendered = plan(config).render()
    assert "~ on_demand_feature_view pandas_odfv (changed: function_hash; function " \
           "fns:pandas_features source" in rendered
    assert "~ feature_service everything (changed: transforms; transforms ~robust_scaler ages:y)" \
           in rendered


def test_quiver_fit_and_transforms_commands(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(repo, env={})
    apply(config)
    path = repo.parent / "labels.parquet"
    pq.write_table(spine([1, 2, 3], [1.0, 2.0, 3.0], NOW), path)
    assert main(["--repo", str(repo), "fit", "everything", "--spine", str(path)]) == 0
    out = capsys.readouterr().out
    assert "parameter version 1" in out and "on 3 rows of" in out
    assert "standard_scaler  nums:x_float: center=2.0; count=3; scale=0.816496580927726" in out
    assert main(["--repo", str(repo), "fit", "everything", "--spine", str(path)]) == 0
    capsys.readouterr()
    assert main(["--repo", str(repo), "transforms", "list"]) == 0
    listed = capsys.readouterr().out
    assert "feature service everything: 10 transforms, current parameter version 2 of 2" in listed
    assert "on-demand view arrow_odfv: ratio, amount_plus, big, doubled = fns:arrow_features(amount, " \
           "nums:x_float, nums:x_int)" in listed
    assert main(["--repo", str(repo), "transforms", "show", "everything", "--version", "1"]) == 0
    shown = capsys.readouterr().out
    assert "parameter version 1\n" in shown and "via cli on 3 rows of file:" in shown
    assert "label_encoder    nums:cat: vocabulary=['a', 'b']" in shown
    # Immutable: the second fit added version 2 and left version 1 as it was.
    proto = RegistryStore(config.registry_path).latest().proto
    assert [p.version for p in proto.transform_parameters] == [1, 2]
    assert proto.transform_parameters[0].fitted_at.ToDatetime() <= \
        proto.transform_parameters[1].fitted_at.ToDatetime()


def test_function_loader_reloads_changed_code_and_refuses_unapplied_code(tmp_path: Path) -> None:
    repo = write_repo(tmp_path / "repo")
    loader = FunctionLoader(repo)
    function, applied = loader.resolve("fns:arrow_features", "test")
    assert loader.load("fns:arrow_features", applied, "test") is function
    rewrite(repo / "fns.py", "pa.scalar(100.0)", "pa.scalar(50.0)")
    changed = source_hash(FunctionLoader(repo).resolve("fns:arrow_features", "test")[0])
    assert changed != applied
    with pytest.raises(FailedPreconditionError, match="differs from the one applied") as caught:
        FunctionLoader(repo).load("fns:arrow_features", applied, "on-demand feature view 'v'")
    assert caught.value.reason == "FUNCTION_CHANGED"
    assert loader.load("fns:arrow_features", changed, "test") is not function


def test_definitions_and_functions_files_are_the_shared_ones() -> None:
    # The repo under test defines every built-in at least once.
    from quiver.transforms import BUILTIN_KINDS

    assert all(f"T.{kind}(" in DEFINITIONS for kind in BUILTIN_KINDS)
    assert 'mode="pandas"' in DEFINITIONS and "def fit_clip" in FUNCTIONS
