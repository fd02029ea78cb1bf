"""A Node.js client generated from protos/ calls the server over TLS with a bearer token.

@grpc/grpc-js and @grpc/proto-loader (versions pinned in node/package.json) are installed
from npm into a cache directory the first time; the test is skipped, saying so, only when
npm is missing or its registry cannot be reached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from authkit import CertificateAuthority, auth_settings, oidc_issuer, write_settings, write_tokens

from quiver_server.config import load_config
from quiver_server.demo_repo import write_demo_repo
from quiver_server.materialize import materialize_range
from quiver_server.repo import apply
from quiver_server.serving.server import create_server

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent / "node"
PROTOS = Path(__file__).resolve().parents[2] / "protos"
_NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "ECONNRESET",
                   "ENETUNREACH", "network")


@pytest.fixture(scope="module")
def node_client() -> Path:
    """A directory holding client.js with its node_modules installed."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("node and npm are needed to test a Node client; neither is installed")
    manifest = (HERE / "package.json").read_bytes()
    cache = Path(os.environ.get("QUIVER_NODE_CACHE", Path.home() / ".cache" / "quiver-tests"))
    directory = cache / f"node-{hashlib.sha256(manifest).hexdigest()[:16]}"
    if not (directory / "node_modules" / "@grpc" / "grpc-js").is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "package.json").write_bytes(manifest)
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=directory, capture_output=True, text=True, timeout=300,
        )
        if done.returncode != 0:
            if any(marker in done.stderr for marker in _NETWORK_ERRORS):
                pytest.skip(f"the npm registry cannot be reached: {done.stderr.strip()[:300]}")
            raise AssertionError(f"npm install failed:\n{done.stderr}")
    shutil.copy(HERE / "client.js", directory / "client.js")
    return directory


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, CertificateAuthority, dict[str, str], str]]:
    base = tmp_path_factory.mktemp("node")
    repo = write_demo_repo(base / "repo", users=10, merchants=3, days=2)
    ca = CertificateAuthority(base / "pki")
    tokens = write_tokens(base / "tokens.yaml", {"fraud-model": [], "mallory": []})
    with oidc_issuer() as issuer:
        write_settings(repo, auth_settings(repo, oidc=issuer, tokens_file=base / "tokens.yaml",
                                           tls_dir=base / "pki", ca=ca))
        config = load_config(repo, env={})
        apply(config)
        end = datetime.now(UTC) + timedelta(seconds=1)
        materialize_range(config, end - timedelta(days=30), end, progress=False)
        app, port = create_server(config, "127.0.0.1", 0)
        with app:
            yield f"localhost:{port}", ca, tokens, issuer.token("fraud-model")


def _call(node_client: Path, target: str, ca: CertificateAuthority, token: str) -> dict[str, object]:
    done = subprocess.run(
        ["node", str(node_client / "client.js"), str(PROTOS), target, str(ca.ca_file), token,
         "fraud_model_v1", "1", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def test_node_client_reads_features_over_tls_with_a_token(node_client: Path, served: tuple) -> None:
    target, ca, tokens, oidc_token = served
    for token in (tokens["fraud-model"], oidc_token):
        answer = _call(node_client, target, ca, token)
        assert answer["code"] == 0, answer
        assert len(answer["feature_names"]) == 20  # type: ignore[arg-type]
        assert answer["statuses"] == ["FEATURE_STATUS_PRESENT"] * 20


def test_node_client_gets_the_rich_status_when_refused(node_client: Path, served: tuple) -> None:
    target, ca, tokens, _ = served
    missing = _call(node_client, target, ca, "-")
    assert missing["code"] == 16 and missing["rich_status_bytes"] > 0  # type: ignore[operator]
    denied = _call(node_client, target, ca, tokens["mallory"])
    assert denied["code"] == 7 and "mallory" in str(denied["details"])
