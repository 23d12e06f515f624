"""matplotlib for the suites' PNGs, when the `bench` extra is installed (CI runs without it)."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any | None:
    """matplotlib.pyplot on the file-only Agg backend; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
