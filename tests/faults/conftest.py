"""Fault suite: reuse the scaler integration harness. The tally is printed by tests/conftest.py."""

from __future__ import annotations

import sys
from pathlib import Path

# Reuse the scaler integration harness (`dask-deploy scale` subprocess, local workers).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "scaler"))
