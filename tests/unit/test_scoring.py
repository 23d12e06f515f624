"""Scoring's own arithmetic and pairing (the real MiniLM's answers: tests/e2e/test_scoring.py)."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequest
from gateway.protocol.scoring import ScoreRequest
from gateway.services.scoring import cosine, pairs


def test_cosine() -> None:
    assert cosine([1.0, 0.0], [2.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 3.0]) == pytest.approx(0.0)
    assert cosine([1.0, 1.0], [-1.0, -1.0]) == pytest.approx(-1.0)
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0  # a zero vector scores nothing rather than dividing by zero


@pytest.mark.parametrize(
    ("text_1", "text_2", "expected"),
    [
        ("q", "a", [("q", "a")]),
        ("q", ["a", "b"], [("q", "a"), ("q", "b")]),
        (["q"], ["a", "b"], [("q", "a"), ("q", "b")]),
        (["q", "r"], ["a", "b"], [("q", "a"), ("r", "b")]),
    ],
)
def test_pairs(text_1: str | list[str], text_2: str | list[str], expected: list[tuple[str, str]]) -> None:
    assert pairs(ScoreRequest(model="m", text_1=text_1, text_2=text_2)) == expected


@pytest.mark.parametrize(("text_1", "text_2"), [(["q", "r"], ["a", "b", "c"]), ([], ["a"]), ("q", [])])
def test_pairs_that_do_not_match_are_400(text_1: list[str], text_2: list[str]) -> None:
    with pytest.raises(InvalidRequest):
        pairs(ScoreRequest(model="m", text_1=text_1, text_2=text_2))
