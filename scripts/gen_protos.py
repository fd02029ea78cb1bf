"""Regenerate the Python code for every .proto under protos/.

Output goes to clients/python/src so that the proto path equals the import path
(protos/quiver/serving/v1/x.proto -> quiver.serving.v1.x_pb2). With --check the
generated files are compared with the committed ones instead, and any drift
fails the run (CI uses this).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "clients" / "python" / "src"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Every generated directory is a package; quiver/ itself is hand-written.
    for directory in {p.parent for p in out.rglob("*_pb2.py")}:
        d = directory
        while d != out / "quiver":
            (d / "__init__.py").touch()
            d = d.parent


def generated_files(base: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(base)): p
        for p in base.rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code drifts")
    args = parser.parse_args()
    if not args.check:
        generate(OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        (fresh_root / "quiver").mkdir()
        generate(fresh_root)
        fresh = generated_files(fresh_root)
        committed = generated_files(OUT)
        drift = sorted(set(fresh) ^ set(committed))
        drift += sorted(
            name for name in set(fresh) & set(committed)
            if not filecmp.cmp(fresh[name], committed[name], shallow=False)
        )
        if drift:
            print("generated protobuf code is out of date; run `make protos`:", file=sys.stderr)
            for name in drift:
                print(f"  {name}", file=sys.stderr)
            return 1
        shutil.rmtree(fresh_root / "quiver")
    print("generated protobuf code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
