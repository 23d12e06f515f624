"""The tests' own waiting and tool checks (tests/support/waiting.py, tests/support/tools.py) do what they say."""

from __future__ import annotations

import pytest

from tests.support.tools import tool_missing
from tests.support.waiting import until, wait_until


def test_wait_until_returns_once_the_check_holds_and_fails_past_the_deadline() -> None:
    calls = iter([False, False, True])
    assert wait_until(lambda: next(calls), 5, "third call", interval_s=0.001) > 0
    with pytest.raises(AssertionError, match="never: not within 0.05s"):
        wait_until(lambda: False, 0.05, "never", interval_s=0.01)


async def test_until_takes_plain_and_async_checks() -> None:
    seen: list[int] = []

    def plain() -> bool:
        seen.append(1)
        return len(seen) >= 2

    async def awaited() -> bool:
        return True

    await until(plain, 5, "plain", interval_s=0.001)
    await until(plain, 5, "on the loop", interval_s=0.001, in_thread=False)
    await until(awaited, 5, "awaited")
    with pytest.raises(AssertionError, match="never"):
        await until(lambda: False, 0.05, "never", interval_s=0.01)


@pytest.mark.parametrize("ci", ["TOKENYARD_CI", "CI", None])
def test_a_missing_tool_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    monkeypatch.delenv("TOKENYARD_CI", raising=False)
    monkeypatch.delenv("CI", raising=False)
    if ci is not None:
        monkeypatch.setenv(ci, "true" if ci == "CI" else "1")
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="no such tool"):
        tool_missing("no such tool")
