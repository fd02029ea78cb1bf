"""The container image's Dockerfile, checked without a Docker engine.

`dockerfile` wraps BuildKit's own Go parser, so "it parses" means what it means to
`docker build`. The rest are the promises the image makes: a slim multi-stage build whose
final stage has no build tools, a numeric non-root user matching the chart, `quiver` as the
entrypoint, and a build context (.dockerignore) that holds every file the build copies and
nothing else.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import pytest

from .helmkit import ROOT, chart_defaults

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BUILD_TOOLS = (
    "gcc",
    "g++",
    "clang",
    "build-essential",
    "make",
    "cmake",
    "cc1",
    "gfortran",
    "python3-dev",
    "libc6-dev",
    "rustc",
    "cargo",
)
PACKAGE_INSTALLERS = ("apt-get", "apt ", "apk ", "dnf ", "yum ", "pip install", "pip3 install")
CHART_COMMANDS = ("serve", "serve-flight", "materialize-incremental", "apply")


@dataclass
class Stage:
    base: str
    name: str | None
    commands: list[dockerfile.Command] = field(default_factory=list)

    def of(self, instruction: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == instruction]


def _parse() -> tuple[dict[str, str], list[Stage]]:
    commands = dockerfile.parse_file(str(DOCKERFILE))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for command in commands:
        if command.cmd == "ARG" and not stages:
            name, _, default = command.value[0].partition("=")
            args[name] = default
        elif command.cmd == "FROM":
            base = re.sub(
                r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], command.value[0]
            )
            name = (
                command.value[2]
                if len(command.value) == 3 and command.value[1].upper() == "AS"
                else None
            )
            stages.append(Stage(base, name))
        else:
            assert stages, f"line {command.start_line}: {command.cmd} before the first FROM"
            stages[-1].commands.append(command)
    return args, stages


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over slash paths."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (is_exception, regex), in file order (Docker: the last match decides)."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        patterns.append((exception, _glob_to_regex(line.lstrip("!").strip("/"))))
    return patterns


def dockerignored(path: str) -> bool:
    """Whether `path` (relative to the repo) is left out of the build context."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for exception, pattern in _ignore_patterns():
        if any(pattern.match(prefix) for prefix in prefixes):
            ignored = not exception
    return ignored


def _copy_sources(command: dockerfile.Command) -> list[str]:
    return list(command.value[:-1])  # the last argument is the destination


ARGS, STAGES = _parse()
FINAL = STAGES[-1]


# ---- Parsing and stages ------------------------------------------------------------------------


def test_dockerfile_parses_with_buildkit_parser() -> None:
    known = {
        "FROM",
        "ARG",
        "ENV",
        "RUN",
        "COPY",
        "WORKDIR",
        "USER",
        "EXPOSE",
        "ENTRYPOINT",
        "CMD",
        "LABEL",
        "HEALTHCHECK",
        "STOPSIGNAL",
        "VOLUME",
        "SHELL",
    }
    commands = dockerfile.parse_file(str(DOCKERFILE))
    assert {c.cmd for c in commands} <= known
    assert "ADD" not in {c.cmd for c in commands}, (
        "COPY only: ADD fetches URLs and unpacks archives"
    )


def test_multi_stage_build_on_a_slim_python_base() -> None:
    assert len(STAGES) >= 2
    stage_names = {s.name for s in STAGES}
    assert FINAL.base not in stage_names, "the final stage starts from a clean base"
    match = re.fullmatch(r"python:(3\.\d+)(\.\d+)?-slim(-\w+)?", FINAL.base)
    assert match, f"final base {FINAL.base!r} should be a slim Python image"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    minimum = re.search(r">=\s*(3\.\d+)", project["requires-python"])
    assert minimum is not None
    version = tuple(int(p) for p in match.group(1).split("."))
    assert version >= tuple(int(p) for p in minimum.group(1).split("."))
    assert all(s.base == FINAL.base for s in STAGES), "build and runtime share one interpreter"


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    for stage in STAGES:
        for command in stage.of("COPY"):
            if any(flag.startswith("--from=") for flag in command.flags):
                continue
            for source in _copy_sources(command):
                path = ROOT / source
                assert path.exists(), f"line {command.start_line}: COPY {source} does not exist"
                assert not dockerignored(source), f"COPY {source} is excluded by .dockerignore"
                if path.is_dir():
                    files = [
                        p for p in path.rglob("*.py") if not dockerignored(str(p.relative_to(ROOT)))
                    ]
                    assert files, f"COPY {source}: no Python file reaches the build context"


def test_every_python_package_root_is_copied() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # The servers' package roots, and the SDK's distribution they depend on by path.
    packages = config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    roots = {str(Path(package).parent) for package in packages}
    roots |= {"clients/python/src", "clients/python/pyproject.toml"}
    copied = {
        source.rstrip("/")
        for stage in STAGES
        for command in stage.of("COPY")
        if not command.flags
        for source in _copy_sources(command)
    }
    assert roots <= copied
    assert "pyproject.toml" in copied


def test_copy_from_names_an_earlier_stage() -> None:
    for index, stage in enumerate(STAGES):
        earlier = {s.name for s in STAGES[:index]}
        for command in stage.of("COPY"):
            for flag in command.flags:
                if flag.startswith("--from="):
                    assert flag.removeprefix("--from=") in earlier, command.original


def test_final_stage_has_no_build_tools() -> None:
    for command in FINAL.of("RUN"):
        text = " ".join(command.value)
        installs = [tool for tool in PACKAGE_INSTALLERS if tool in text]
        assert installs == [], f"the runtime stage installs packages: {command.original}"
        words = set(re.split(r"[\s;&|=]+", text))
        assert words.isdisjoint(BUILD_TOOLS), command.original


def test_dependencies_install_from_wheels_only() -> None:
    """No stage needs a compiler: dependencies come as wheels (--only-binary=:all:)."""
    runs = [" ".join(c.value) for s in STAGES for c in s.of("RUN")]
    installs = [r for r in runs if "pip" in r and " install " in r]
    assert installs and all("--only-binary=:all:" in r for r in installs)
    for run in runs:
        assert set(re.split(r"[\s;&|=]+", run)).isdisjoint(BUILD_TOOLS), run


def test_runs_as_the_chart_user() -> None:
    (user,) = FINAL.of("USER")
    uid, _, gid = user.value[0].partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can be verified"
    assert gid.isdigit() and int(gid) != 0
    pod = chart_defaults()["podSecurityContext"]
    assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"])
    assert FINAL.commands.index(user) > max(FINAL.commands.index(c) for c in FINAL.of("RUN"))


def test_entrypoint_is_quiver_from_the_copied_environment() -> None:
    (entrypoint,) = FINAL.of("ENTRYPOINT")
    assert entrypoint.json and list(entrypoint.value) == ["quiver"]
    (cmd,) = FINAL.of("CMD")
    assert cmd.json and cmd.value[0] in CHART_COMMANDS
    env = " ".join(" ".join(c.value) for c in FINAL.of("ENV"))
    path = re.search(r"PATH\s+(\S+)|PATH=(\S+)", env)
    assert path is not None
    venv_bin = (path.group(1) or path.group(2)).split(":")[0]
    copied = [c for c in FINAL.of("COPY") if any(f.startswith("--from=") for f in c.flags)]
    assert any(venv_bin.startswith(c.value[-1].rstrip("/") + "/") for c in copied), venv_bin


def test_exposed_ports_match_the_chart() -> None:
    values = chart_defaults()
    exposed = {int(p.split("/")[0]) for c in FINAL.of("EXPOSE") for p in c.value}
    assert exposed == {
        values["serving"]["port"],
        values["flight"]["port"],
        values["telemetry"]["metrics"]["port"],
    }


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/config",
        "tests/unit/test_x.py",
        "data/online.db",
        "server/src/quiver_server/__pycache__/cli.cpython-311.pyc",
        "quiver_feature_store.egg-info/PKG-INFO",
        ".env",
        "deploy/helm/quiver/values.yaml",
        "demo-repo/quiver.yaml",
    ],
)
def test_build_context_leaves_out(path: str) -> None:
    assert dockerignored(path)


def test_build_context_keeps_sources() -> None:
    for path in (
        "pyproject.toml",
        "server/src/quiver_server/config.py",
        "clients/python/src/quiver/__init__.py",
    ):
        assert not dockerignored(path), path


# ---- The entrypoint in the project's own environment --------------------------------------------


@pytest.mark.slow
def test_entrypoint_command_runs_in_the_project_environment() -> None:
    quiver = Path(sys.executable).parent / "quiver"
    assert quiver.exists(), (
        f"{quiver}: the `quiver` console script is not installed in this environment"
    )
    result = subprocess.run([str(quiver), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for command in CHART_COMMANDS:
        assert re.search(rf"(?<![\w-]){re.escape(command)}(?![\w-])", result.stdout), (
            f"`quiver --help` does not list {command!r}, which the image or the chart runs"
        )
    assert "--repo" in result.stdout


# ---- The smoke test of the built environment ---------------------------------------------------

SMOKE = ROOT / "scripts" / "smoke_servers.py"


def test_build_runs_the_smoke_test_of_both_servers_in_the_installed_environment() -> None:
    """`quiver --help` imports only the CLI; the image must prove both servers start."""
    (build,) = [s for s in STAGES if any("install" in " ".join(c.value) for c in s.of("RUN"))]
    copied = [src for c in build.of("COPY") if not c.flags for src in _copy_sources(c)]
    assert "scripts/smoke_servers.py" in copied
    run = next(" ".join(c.value) for c in build.of("RUN") if "smoke_servers.py" in " ".join(c.value))
    install = run.index(" install ")
    smoke = run.index("smoke_servers.py")
    assert install < smoke, "the smoke test runs after the environment is installed"
    assert "/opt/quiver/bin/python scripts/smoke_servers.py --quiver /opt/quiver/bin/quiver" in run
    script = SMOKE.read_text()
    for command in ('"serve"', '"serve-flight"'):
        assert command in script, f"the smoke script does not start {command}"


@pytest.mark.slow
def test_smoke_script_passes_in_the_project_environment() -> None:
    quiver = Path(sys.executable).parent / "quiver"
    result = subprocess.run(
        [sys.executable, str(SMOKE), "--quiver", str(quiver), "--timeout", "120"],
        capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke test passed" in result.stdout


def test_spark_image_installs_exactly_the_spark_extra() -> None:
    """deploy/spark.Dockerfile installs the `spark` extra's pins by hand (the image has no
    source tree to install the extra from): the two lists must not drift apart."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["spark"]
    text = (ROOT / "deploy" / "spark.Dockerfile").read_text()
    installed = re.findall(r"'([A-Za-z0-9_.\-\[\]]+==[^']+)'", text)
    assert sorted(installed) == sorted(extra)
