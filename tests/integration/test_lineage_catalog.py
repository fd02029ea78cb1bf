"""Lineage and catalog search, over RegistryService (a real gRPC server) and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from governed import spine, write_repo

from quiver import TrainingClient
from quiver.registry.v1 import registry_service_pb2 as pb
from quiver.registry.v1 import registry_service_pb2_grpc as pb_grpc
from quiver_server.cli import main as cli_main
from quiver_server.config import QuiverConfig
from quiver_server.materialize import materialize_range
from quiver_server.serving.server import create_server


@pytest.fixture
def repo(tmp_path: Path, flight_server: Any) -> QuiverConfig:
    config = write_repo(tmp_path / "repo")
    end = datetime(2024, 6, 10, tzinfo=UTC)
    materialize_range(config, end - timedelta(days=30), end, progress=False)
    with flight_server(config) as location, TrainingClient(location) as client:
        client.create_training_dataset("fraud_train", spine(), feature_service="model",
                                       description="Fraud model, June", tags={"pii": "no"})
    return config


@pytest.fixture
def stub(repo: QuiverConfig) -> Iterator[pb_grpc.RegistryServiceStub]:
    app, port = create_server(repo, "127.0.0.1", 0)
    with app, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.RegistryServiceStub(channel)


def names(node: Any, kind: str) -> list[str]:
    found = [node.name] if node.kind == kind else []
    for child in node.children:
        found.extend(names(child, kind))
    return found


def test_lineage_over_grpc(stub: pb_grpc.RegistryServiceStub) -> None:
    view = stub.GetLineage(pb.GetLineageRequest(name="stats")).root
    assert (view.kind, view.name) == ("feature_view", "stats")
    assert names(view, "source") == ["stats"]
    assert names(view, "feature_service") == ["model"]
    assert names(view, "training_dataset") == ["fraud_train:1"]
    [run] = names(view, "materialization")
    assert run.startswith("[2024-05-11T00:00:00+00:00, 2024-06-10T00:00:00+00:00)")

    service = stub.GetLineage(pb.GetLineageRequest(name="model")).root
    assert names(service, "feature_view") == ["stats", "profile"]
    assert names(service, "training_dataset") == ["fraud_train:1"]

    dataset = stub.GetLineage(pb.GetLineageRequest(name="fraud_train:1", kind="training_dataset")).root
    assert names(dataset, "feature_view") == ["stats", "profile"]
    assert names(dataset, "status") == ["reproducible"]

    with pytest.raises(grpc.RpcError) as missing:
        stub.GetLineage(pb.GetLineageRequest(name="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as bad:
        stub.GetLineage(pb.GetLineageRequest(name="stats", kind="table"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_training_datasets_over_grpc(stub: pb_grpc.RegistryServiceStub) -> None:
    [listed] = stub.ListTrainingDatasets(pb.ListTrainingDatasetsRequest()).datasets
    assert (listed.dataset.name, listed.dataset.version, listed.status.reproducible) == ("fraud_train", 1, True)
    got = stub.GetTrainingDataset(pb.GetTrainingDatasetRequest(name="fraud_train")).dataset
    assert got.dataset.row_count == 120 and got.dataset.feature_service == "model"
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetTrainingDataset(pb.GetTrainingDatasetRequest(name="fraud_train", version=3))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_search_over_grpc(stub: pb_grpc.RegistryServiceStub) -> None:
    found = stub.SearchCatalog(pb.SearchCatalogRequest(text="identity")).entries
    assert [(e.kind, e.name) for e in found] == [
        ("entity", "user"), ("feature_view", "profile"), ("feature", "profile:age"),
    ]
    assert all(e.matched == ["owner"] for e in found)
    tagged = stub.SearchCatalog(pb.SearchCatalogRequest(text="pii=yes")).entries
    assert [e.name for e in tagged] == ["profile"]
    spend = stub.SearchCatalog(pb.SearchCatalogRequest(text="spend", kinds=["feature"])).entries
    assert [e.name for e in spend] == ["stats:spend"]
    assert list(spend[0].used_by) == ["feature_service:model", "training_dataset:fraud_train:1"]
    assert [(v.registry_version, v.change) for v in spend[0].versions] == [(1, "created")]
    entry = stub.GetCatalogEntry(pb.GetCatalogEntryRequest(kind="feature_view", name="stats")).entry
    assert entry.owner == "risk@example.com" and entry.description == "Card spend per user"
    assert dict(entry.tags) == {"pii": "no"}
    with pytest.raises(grpc.RpcError) as empty:
        stub.SearchCatalog(pb.SearchCatalogRequest(text="  "))
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cli(repo: QuiverConfig, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--repo", str(repo.repo_path)]
    assert cli_main([*base, "lineage", "stats"]) == 0
    tree = capsys.readouterr().out
    assert tree.startswith("feature view stats")
    assert "├── source stats" in tree and "training dataset fraud_train:1" in tree
    assert cli_main([*base, "lineage", "model", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "feature_service"
    assert cli_main([*base, "search", "card", "spend"]) == 0
    out = capsys.readouterr().out
    assert "feature view stats" in out and "owner risk@example.com" in out
    assert cli_main([*base, "datasets", "list"]) == 0
    assert "fraud_train:1" in capsys.readouterr().out
    assert cli_main([*base, "datasets", "show", "fraud_train", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["dataset"]["name"] == "fraud_train" and shown["status"]["reproducible"]
    assert cli_main([*base, "datasets", "show", "fraud_train"]) == 0
    assert "status       reproducible" in capsys.readouterr().out
    assert cli_main([*base, "lineage", "fraud_train"]) == 0
    assert "status reproducible" in capsys.readouterr().out
