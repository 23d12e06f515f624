"""The tallied histogram (observed per streamed chunk) renders what prometheus_client's Histogram would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.metrics import TalliedHistogram

BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_tallied_histogram_renders_the_samples_of_a_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tallied = TalliedHistogram("gap_seconds", "Gaps.", "model", BUCKETS, registry=ours)
    reference = Histogram("gap_seconds", "Gaps.", ["model"], buckets=BUCKETS, registry=theirs)
    rng = random.Random(7)
    values = [*BUCKETS, 0.0, 3.0, 1e-6] + [rng.expovariate(30) for _ in range(500)]  # bounds themselves too
    for i, value in enumerate(values):
        model = "a" if i % 3 else "b"
        tallied.labels(model).observe(value)
        reference.labels(model).observe(value)
    rendered = samples(ours)
    assert rendered.keys() == samples(theirs).keys()
    for key, expected in samples(theirs).items():
        assert abs(rendered[key] - expected) < 1e-9, key
    assert rendered[("gap_seconds_count", (("model", "a"),))] == sum(1 for i in range(len(values)) if i % 3)


def test_tallied_histogram_is_described_before_anything_is_observed() -> None:
    registry = CollectorRegistry(auto_describe=True)
    TalliedHistogram("gap_seconds", "Gaps.", "model", BUCKETS, registry=registry)
    text = generate_latest(registry).decode()
    assert "# TYPE gap_seconds histogram" in text
    assert "gap_seconds_bucket" not in text
