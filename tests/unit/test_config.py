from __future__ import annotations

from pathlib import Path

import pytest

from quiver.errors import DefinitionError
from quiver_server.config import load_config


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "quiver.yaml").write_text(text)
    return tmp_path


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "project: p\n"), env={})
    assert config.online_store.type == "sqlite"
    assert config.registry_path == (tmp_path / "data" / "registry").resolve()
    assert config.serving.port == 6566
    assert config.monitoring.enabled and config.monitoring.serving_sample_rate == 0.01
    assert config.monitoring.reference == "trailing"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    repo = write(tmp_path, "project: p\nserving: {port: 1234}\n")
    config = load_config(
        repo,
        env={
            "QUIVER_SERVING__PORT": "7000",
            "QUIVER_ONLINE_STORE__TYPE": "aerospike",
            "QUIVER_ONLINE_STORE__HOSTS": '["a:3000", "b:3000"]',
            "QUIVER_TEST_AEROSPIKE": "ignored:1",
        },
    )
    assert config.serving.port == 7000
    assert config.online_store.type == "aerospike"
    assert config.online_store.hosts == ["a:3000", "b:3000"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("project: p\nbogus: 1\n", "bogus: Extra inputs are not permitted"),
        ("project: p\nonline_store: {type: redis}\n", "online_store: Input tag 'redis'"),
        ("project: p\nserving: {port: 70000}\n", "serving.port: Input should be less than"),
        ("serving: {}\n", "project: Field required"),
        ("project: [\n", "not valid YAML"),
        ("project: p\nmonitoring: {serving_sample_rate: 2}\n",
         "monitoring.serving_sample_rate: Input should be less than or equal to 1"),
        ("project: p\nmonitoring: {reference: last_week}\n",
         "monitoring.reference: String should match pattern"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DefinitionError, match=message.replace("[", r"\[")):
        load_config(write(tmp_path, text), env={})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="quiver.yaml: not found"):
        load_config(tmp_path, env={})
