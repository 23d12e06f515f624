"""Install the Suite 2 peers, each into its own virtual environment under bench/.peers/ (gitignored).

    python -m bench.peers [litellm vllm-router sglang-router]

Every install is hash-checked (`pip install --require-hashes`): pip first resolves the peer's whole
dependency tree (`--dry-run --report`), we check the peer's own artifact against the sha256 pinned here,
write the tree as a hashed lock file next to the venv, then install exactly that lock.

Why these versions:
- litellm 1.82.6 (2026-03-22): 1.82.7 and 1.82.8 were published by an attacker on 2026-03-24 (the
  "TeamPCP" supply-chain attack: a credential stealer, a `.pth` that runs on every interpreter start)
  and removed from PyPI; LiteLLM's security update names 1.82.6 as the last release built by the
  maintainers before the incident, and it is the version the ecosystem pinned to. Its wheel's sha256 is
  the one PyPI recorded at upload, three days before the attack.
- vllm-router 0.1.17 and sglang-router 0.3.2: the newest releases on PyPI when this was written.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent / ".peers"


@dataclass(frozen=True)
class Peer:
    name: str  # the venv folder and the key in results
    requirement: str  # what pip resolves
    package: str  # the distribution whose artifact hash is pinned
    version: str
    sha256: frozenset[str]  # accepted artifacts (the platform wheels we may get)
    command: str  # the console script inside the venv that runs it


PEERS = {
    "litellm": Peer(
        "litellm",
        "litellm[proxy]==1.82.6",
        "litellm",
        "1.82.6",
        frozenset({"164a3ef3e19f309e3cabc199bef3d2045212712fefdfa25fc7f75884a5b5b205"}),
        "litellm",
    ),
    "vllm-router": Peer(
        "vllm-router",
        "vllm-router==0.1.17",
        "vllm-router",
        "0.1.17",
        frozenset({"85c96bea4d573a49b5a8ae4c72ee3dfe733aba26b6f1ff1256e6142f1f42694d"}),
        "vllm-router",
    ),
    "sglang-router": Peer(
        "sglang-router",
        "sglang-router==0.3.2",
        "sglang-router",
        "0.3.2",
        frozenset({"ba5a24951e5e0357fe390782fcd1abd861448a87216832dbf2e501a1dd1548eb"}),
        "sglang-router",
    ),
}


def venv(peer: str) -> Path:
    return PEERS_DIR / peer


def python(peer: str) -> Path:
    return venv(peer) / "bin" / "python"


def installed(peer: str) -> bool:
    return (venv(peer) / ".installed").exists()


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def lock(peer: Peer) -> Path:
    """Resolve the peer's tree and write it as `name==version --hash=sha256:...` lines."""
    report = venv(peer.name) / "resolve.json"
    subprocess.run(
        [
            str(python(peer.name)),
            "-m",
            "pip",
            "install",
            "-q",
            "--dry-run",
            "--ignore-installed",
            "--only-binary",
            ":all:",
            "--report",
            str(report),
            peer.requirement,
        ],
        check=True,
    )
    lines = []
    for item in json.loads(report.read_text())["install"]:
        meta, info = item["metadata"], item["download_info"]
        digest = (
            info.get("archive_info", {}).get("hashes", {}).get("sha256")
            or info.get("archive_info", {}).get("hash", "=").split("=", 1)[1]
        )
        if _norm(meta["name"]) == _norm(peer.package):
            if meta["version"] != peer.version or digest not in peer.sha256:
                raise SystemExit(
                    f"{peer.name}: got {meta['version']} sha256 {digest}, which is not the pinned artifact"
                )
        lines.append(f"{meta['name']}=={meta['version']} --hash=sha256:{digest}")
    out = venv(peer.name) / "lock.txt"
    out.write_text("\n".join(sorted(lines)) + "\n")
    return out


def install(peer: Peer) -> None:
    if installed(peer.name):
        return
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv(peer.name))], check=True)
    subprocess.run([str(python(peer.name)), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    locked = lock(peer)
    subprocess.run(
        [
            str(python(peer.name)),
            "-m",
            "pip",
            "install",
            "-q",
            "--require-hashes",
            "--no-deps",
            "--only-binary",
            ":all:",
            "-r",
            str(locked),
        ],
        check=True,
    )
    (venv(peer.name) / ".installed").write_text(peer.requirement + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    args = parser.parse_args()
    PEERS_DIR.mkdir(exist_ok=True)
    failed = {}
    for name in args.peers:
        try:
            install(PEERS[name])
            print(f"{name}: installed in {venv(name)}")
        except (subprocess.CalledProcessError, SystemExit, OSError) as exc:
            failed[name] = str(exc)
            print(f"{name}: FAILED {exc}", file=sys.stderr)
    (PEERS_DIR / "status.json").write_text(
        json.dumps({name: {"installed": installed(name), "error": failed.get(name)} for name in PEERS}, indent=1)
    )
    if os.environ.get("PEERS_STRICT") and failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
