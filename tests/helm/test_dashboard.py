"""The Grafana dashboard is valid JSON and queries only metrics that tokenyard and vLLM export."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from tests.helm.rendering import CHART_DIR

DASHBOARDS = sorted((CHART_DIR / "dashboards").glob("*.json"))
HISTOGRAMS = {
    "tokenyard_request_duration_seconds",
    "tokenyard_time_to_first_token_seconds",
    "tokenyard_inter_token_latency_seconds",
}
KNOWN_METRICS = {
    "tokenyard_requests_total",
    "tokenyard_prompt_tokens_total",
    "tokenyard_completion_tokens_total",
    "tokenyard_requests_in_flight",
    "tokenyard_queue_depth",
    "tokenyard_queue_longest_wait_seconds",
    "tokenyard_key_waiting",
    "tokenyard_rejected_total",
    "tokenyard_upstream_healthy",
    "tokenyard_upstream_retries_total",
    "tokenyard_breaker_state",
    "tokenyard_client_disconnects_total",
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:cache_config_info",
} | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
# Labels the exporters set, plus those Prometheus adds when scraping through the chart's ServiceMonitor.
KNOWN_LABELS = {
    "model",
    "route",
    "status",
    "upstream",
    "reason",
    "key",
    "le",
    "model_name",
    "namespace",
    "pod",
    "component",
    "job",
    "instance",
    "service",
}
# Grafana's variables, replaced by values of the same shape before parsing.
VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
LABEL_VALUES = re.compile(r"^label_values\((?P<query>.+),\s*(?P<label>[a-zA-Z_]\w*)\s*\)$")


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = LABEL_VALUES.match(query)
            assert match, f"variable {variable['name']}: only label_values(...) queries are used"
            yield f"variable {variable['name']}", match["query"]


def substitute(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    # Label matchers on dashboard variables: `=~"$model"` -> any value.
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def selectors(expr: str) -> list[Any]:
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(substitute(expr)), visit)
    return found


@pytest.fixture(params=DASHBOARDS, ids=lambda path: path.name)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    path: Path = request.param
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def test_there_is_a_dashboard() -> None:
    assert DASHBOARDS


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            # Every query goes to the data source the viewer picks.
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"]
            assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])


def test_dashboard_has_the_panels_operators_need(dashboard: dict[str, Any]) -> None:
    text_by_panel = {panel["title"]: json.dumps(panel) for panel in panels(dashboard) if panel["type"] != "row"}

    def panel_using(metric: str) -> bool:
        return any(metric in text for text in text_by_panel.values())

    assert panel_using("tokenyard_time_to_first_token_seconds_bucket")
    assert panel_using("tokenyard_inter_token_latency_seconds_bucket")
    assert panel_using("tokenyard_completion_tokens_total")
    assert panel_using('status=~\\"4..|5..\\"')
    assert panel_using("vllm:num_requests_waiting") and panel_using("tokenyard_queue_depth")
    assert panel_using("vllm:kv_cache_usage_perc")
    kv_panel = next(p for p in panels(dashboard) if "vllm:kv_cache_usage_perc" in json.dumps(p))
    assert "model_name" in json.dumps(kv_panel["targets"])  # per model


def test_every_query_parses_and_uses_known_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    seen: set[str] = set()
    for where, expr in expressions(dashboard):
        found = selectors(expr)
        assert found, f"{where}: no metric in {expr!r}"
        for selector in found:
            assert selector.name in KNOWN_METRICS, f"{where}: unknown metric {selector.name!r}"
            seen.add(selector.name)
            for matcher in selector.matchers.matchers:
                assert matcher.name in KNOWN_LABELS, f"{where}: unknown label {matcher.name!r}"
    assert len(seen) >= 10


def test_substitution_keeps_queries_parseable() -> None:
    expr = 'sum by (model) (rate(tokenyard_requests_total{model=~"$model"}[$__rate_interval]))'
    assert [s.name for s in selectors(expr)] == ["tokenyard_requests_total"]
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(tokenyard_requests_total[5m]")
