from __future__ import annotations

from tests.helm.rendering import CHART_DIR
from tests.helm.values_table import README, documented_keys, readme_with_table


def test_chart_readme_has_the_generated_values_table() -> None:
    readme = README.read_text()
    assert readme == readme_with_table(readme), "regenerate it: python -m tests.helm.values_table"


def test_the_table_lists_nested_keys_but_not_list_items() -> None:
    keys = dict(documented_keys((CHART_DIR / "values.yaml").read_text()))
    assert {
        "internalKey.existingSecret",
        "router.image.digest",
        "engineDefaults.multiNode.nodes",
        "engineDefaults.keda.routerTrigger.threshold",
        "networkPolicy.metricsFrom",
        "models",
    } <= keys.keys()
    assert not [key for key in keys if key.startswith(("models.", "networkPolicy.metricsFrom."))]
    assert keys["apiKeys.guardMetrics"].startswith("Ask for a key on the router's /metrics")
