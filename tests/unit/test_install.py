"""The install recipe's pitfalls stay fixed: vLLM imports next to torch+cpu."""

from __future__ import annotations

import subprocess
import sys


def test_import_vllm() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import vllm, torch; print(vllm.__version__, torch.__version__)"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    vllm_version, torch_version = result.stdout.split()
    assert vllm_version.startswith("0.32")
    assert torch_version.startswith("2.13.0")


def test_broken_torch_addons_are_absent() -> None:
    import importlib.util

    # PyPI's builds fail to load next to torch+cpu (torchvision::nms, missing .so files).
    assert [m for m in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(m)] == []
