"""Registry versions verify themselves: a damaged file is refused, named, and never served."""

from __future__ import annotations

from pathlib import Path

import pytest

from quiver.errors import FailedPreconditionError
from quiver.registry.v1 import registry_pb2 as pb
from quiver_server.cli import main as cli_main
from quiver_server.config import QuiverConfig
from quiver_server.registry import framing
from quiver_server.registry.provider import RegistryProvider
from quiver_server.registry.store import RegistryStore


def version_file(config: QuiverConfig, version: int) -> Path:
    return config.registry_path / f"v{version:08d}.pb"


def refused(store: RegistryStore, version: int) -> bool:
    try:
        store.read(version)
    except FailedPreconditionError as exc:
        assert exc.reason == "REGISTRY_VERSION_CORRUPT", exc.message
        assert f"registry version {version} does not verify" in exc.message
        return True
    return False


def verifies(data: bytes, version: int) -> bool:
    try:
        framing.decode(data, version)
    except framing.CorruptVersion:
        return False
    return True


def test_every_truncation_and_every_byte_flip_is_refused(materialized: QuiverConfig) -> None:
    store = RegistryStore(materialized.registry_path)
    version = store.latest_version()
    file = version_file(materialized, version)
    data = file.read_bytes()
    assert data.startswith(framing.MAGIC) and verifies(data, version)
    damaged = {f"truncated to {cut}": data[:cut] for cut in range(len(data))}
    for at in range(len(data)):
        flipped = bytearray(data)
        flipped[at] ^= 0x01
        damaged[f"bit flipped at {at}"] = bytes(flipped)
    damaged["extended"] = data + b"\x00"
    silent = [what for what, bytes_ in damaged.items() if verifies(bytes_, version)]
    assert silent == [], f"{len(silent)} damaged files parsed silently: {silent[:10]}"
    # Through the store, as a server reads it: a sample of the same damage.
    for what in ("truncated to 0", f"truncated to {len(data) // 2}", "bit flipped at 50", "extended"):
        file.write_bytes(damaged[what])
        assert refused(RegistryStore(materialized.registry_path), version), what
    file.write_bytes(data)
    assert store.read(version).version == version


def test_unframed_versions_from_before_framing_still_read_and_truncations_do_not(
    materialized: QuiverConfig,
) -> None:
    store = RegistryStore(materialized.registry_path)
    version = store.latest_version()
    proto = store.read(version)
    # Versions written before framing had no permissions, on-demand views or
    # parameter sets (the fields serialized after `cause`).
    del proto.permissions[:]
    proto.ClearField("on_demand_feature_views")
    proto.ClearField("transform_parameters")
    legacy = proto.SerializeToString()  # how versions were written before framing
    file = version_file(materialized, version)
    file.write_bytes(legacy)
    assert RegistryStore(materialized.registry_path).read(version) == proto
    silent = [cut for cut in range(len(legacy)) if verifies(legacy[:cut], version)]
    assert silent == [], f"{len(silent)} truncations of an unframed file parsed silently"
    file.write_bytes(legacy[: len(legacy) // 2])
    assert refused(RegistryStore(materialized.registry_path), version)


def test_a_file_holding_another_version_is_refused(materialized: QuiverConfig) -> None:
    store = RegistryStore(materialized.registry_path)
    newest = store.latest_version()
    version_file(materialized, newest).write_bytes(version_file(materialized, 1).read_bytes())
    with pytest.raises(FailedPreconditionError, match=f"it holds version 1, not {newest}"):
        RegistryStore(materialized.registry_path).read(newest)


def corrupt_newest(config: QuiverConfig) -> tuple[int, int]:
    """Truncate the newest version; returns (bad version, newest good version)."""
    store = RegistryStore(config.registry_path)
    bad = store.latest_version()
    file = version_file(config, bad)
    file.write_bytes(file.read_bytes()[:40])
    return bad, bad - 1


def test_servers_keep_the_newest_version_that_verifies(materialized: QuiverConfig) -> None:
    bad, good = corrupt_newest(materialized)
    provider = RegistryProvider(RegistryStore(materialized.registry_path))  # a restart
    assert provider.ready and provider.current().version == good
    store = RegistryStore(materialized.registry_path)
    assert store.latest_good_version() == good
    assert store.bad_versions().keys() == {bad}
    for version in store.versions():
        version_file(materialized, version).write_bytes(b"")
    nothing = RegistryProvider(RegistryStore(materialized.registry_path))
    assert not nothing.ready
    with pytest.raises(Exception, match="no registry version verifies"):
        nothing.current()


def test_writers_refuse_a_bad_newest_version_until_repair(
    materialized: QuiverConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    store = RegistryStore(materialized.registry_path)
    watermarks = dict(store.read(store.latest_version()).view_meta)
    bad, good = corrupt_newest(materialized)
    repo = str(materialized.repo_path)
    features = materialized.repo_path / "features.py"
    features.write_text(features.read_text().replace('name="user_risk"', 'name="user_risk_v2"'))
    for command in (["apply"], ["materialize-incremental", "now"], ["plan"]):
        assert cli_main(["--repo", repo, *command]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(
            f"quiver: error: registry version {bad} does not verify (truncated"), err
        assert "Traceback" not in err
    assert store.versions()[-1] == bad, "nothing was written on top of the bad version"

    assert cli_main(["--repo", repo, "registry", "history"]) == 1
    out = capsys.readouterr().out
    assert f"v{bad}\tDOES NOT VERIFY\tv{bad:08d}.pb: truncated" in out
    assert f"v{good}\t" in out

    assert cli_main(["--repo", repo, "registry", "repair"]) == 0
    assert f"v{bad}\tset aside as v{bad:08d}.pb.corrupt" in capsys.readouterr().out
    assert cli_main(["--repo", repo, "apply"]) == 0
    capsys.readouterr()
    fresh = RegistryStore(materialized.registry_path)
    assert fresh.latest_version() == bad + 1, "a set-aside number is not given out again"
    applied = fresh.read(bad + 1)
    assert {s.name for s in applied.feature_services} >= {"user_risk_v2"}
    # Built on the newest good version, with the watermarks it holds.
    base = fresh.read(good)
    for name, meta in base.view_meta.items():
        assert applied.view_meta[name].materialization == meta.materialization
    assert watermarks  # the bad version's own watermarks are gone with it, as repair says
    assert cli_main(["--repo", repo, "registry", "history"]) == 0
    assert f"v{bad}\tSET ASIDE" in capsys.readouterr().out


def test_prune_keeps_good_versions_and_never_the_bad_newest_alone(materialized: QuiverConfig) -> None:
    bad, good = corrupt_newest(materialized)
    store = RegistryStore(materialized.registry_path)
    store.prune(1)
    assert good in store.versions() and bad in store.versions()
    assert store.latest_good_version() == good


def test_new_versions_are_framed(applied_demo: QuiverConfig) -> None:
    data = version_file(applied_demo, 1).read_bytes()
    assert data.startswith(framing.MAGIC)
    assert framing.decode(data, 1).cause == "apply"
    with pytest.raises(Exception):  # a reader that predates framing fails loudly
        pb.Registry().ParseFromString(data)


def test_cli_reports_a_registry_it_cannot_use_in_one_line(
    demo_config: QuiverConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    (demo_config.repo_path / "quiver.yaml").write_text(
        (demo_config.repo_path / "quiver.yaml").read_text() + "registry: features.py\n"
    )
    assert cli_main(["--repo", str(demo_config.repo_path), "apply"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("quiver: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_a_version_that_failed_to_load_is_tried_again(materialized: QuiverConfig) -> None:
    """A read error (not damage: the file may read fine a moment later) leaves the
    provider on its version, and the next refresh loads the new one."""
    store = RegistryStore(materialized.registry_path)
    provider = RegistryProvider(store)
    served = provider.version
    # The next version's name exists but cannot be read yet (an OSError, as a
    # network volume or a full file table gives).
    blocker = version_file(materialized, served + 1)
    blocker.mkdir()
    with pytest.raises(OSError):
        provider.refresh()
    assert provider.current().version == served
    blocker.rmdir()
    RegistryStore(materialized.registry_path).commit(lambda proto: "a new version")
    assert provider.refresh()
    assert provider.current().version == served + 1


def test_an_unframed_file_with_permissions_is_refused(materialized: QuiverConfig) -> None:
    # `cause` is not the last field of such a file, so truncations could pass for complete.
    store = RegistryStore(materialized.registry_path)
    version = store.latest_version()
    proto = store.read(version)
    assert proto.permissions
    assert not verifies(proto.SerializeToString(), version)
