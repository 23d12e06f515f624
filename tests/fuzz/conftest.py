"""Hypothesis keeps caches under .hypothesis/ in the working directory: keep them out of the tree."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "tokenyard-hypothesis")
