"""Every Prometheus metric the scaler serves is documented, in the one place the docs name."""

from __future__ import annotations

from pathlib import Path

from dask_deploy.metrics import ScalerMetrics

DOCS = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"


def served_names() -> set[str]:
    names = set()
    for family in ScalerMetrics().registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        names.add(family.name + suffix)
    return names


def test_every_scaler_metric_is_documented_in_python_api_md() -> None:
    section = DOCS.read_text().split("## What the scaler explains, in one place", 1)[1]
    section = section.split("\n## ", 1)[0]
    missing = sorted(name for name in served_names() if f"`{name}" not in section)
    assert missing == [], f"not documented in {DOCS.name}: {missing}"
