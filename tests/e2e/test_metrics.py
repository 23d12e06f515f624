"""/metrics during real traffic: the counters move by exactly what was served, and promtool accepts it."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEXT_MODEL

GATEWAY_PREFIX = "tokenyard_"


def scrape(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_follow_real_traffic(client: openai.OpenAI, http: httpx.Client) -> None:
    before = scrape(http)
    usages = []
    for stream in (False, True):
        for _ in range(2):
            if stream:
                chunks = list(
                    client.chat.completions.create(
                        model=TEXT_MODEL,
                        messages=[{"role": "user", "content": "Hi"}],
                        max_tokens=4,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                )
                usages.append(chunks[-1].usage)
            else:
                usages.append(
                    client.chat.completions.create(
                        model=TEXT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
                    ).usage
                )
    after = scrape(http)
    route = {"model": TEXT_MODEL, "route": "/v1/chat/completions"}

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("tokenyard_requests_total", status="200", **route) == 4
    assert moved("tokenyard_request_duration_seconds_count", **route) == 4
    assert moved("tokenyard_time_to_first_token_seconds_count", model=TEXT_MODEL) == 4
    gaps = moved("tokenyard_inter_token_latency_seconds_count", model=TEXT_MODEL)  # a tallied histogram
    assert gaps > 0 and gaps == moved("tokenyard_inter_token_latency_seconds_bucket", model=TEXT_MODEL, le="+Inf")
    assert moved("tokenyard_prompt_tokens_total", model=TEXT_MODEL) == sum(u.prompt_tokens for u in usages if u)
    assert moved("tokenyard_completion_tokens_total", model=TEXT_MODEL) == sum(u.completion_tokens for u in usages if u)
    assert value(after, "tokenyard_requests_in_flight", model=TEXT_MODEL) == 0
    # vLLM's own engine family, under vLLM's names, beside ours
    assert value(after, "vllm:num_requests_running", engine="0", model_name=TEXT_MODEL) == 0
    names = {name for name, _ in after}
    assert {"vllm:kv_cache_usage_perc", "vllm:num_requests_waiting", "vllm:cache_config_info"} <= names


def _metric_name(line: str) -> str:
    """The metric a line of the text format speaks of ("# HELP name ...", "# TYPE name ...", "name{...} v")."""
    parts = line.split()
    return parts[2] if line.startswith("# ") and len(parts) > 2 else line


def test_gateway_family_passes_promtool(http: httpx.Client) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by `make test` (Debian package prometheus)"
    text = http.get("/metrics").text
    # vLLM's family keeps vLLM's names for its dashboards; only ours is held to promtool's lint.
    ours = "".join(line + "\n" for line in text.splitlines() if _metric_name(line).startswith(GATEWAY_PREFIX))
    assert "tokenyard_requests_total" in ours
    result = subprocess.run([promtool, "check", "metrics"], input=ours, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
