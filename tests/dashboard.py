"""The shipped Grafana dashboard and the metric names its PromQL queries read (shared by the chart and e2e tests)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[1] / "charts" / "sdtask-operator" / "dashboards" / "sdtask-operator.json"

_FUNCTIONS_AND_KEYWORDS = {
    "sum", "avg", "min", "max", "count", "rate", "irate", "increase", "histogram_quantile", "by", "without", "on",
    "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "label_values", "topk", "bottomk",
    "clamp_min", "clamp_max", "delta", "deriv", "abs", "time", "vector", "scalar", "bool",
}  # fmt: skip
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return result


def queries(board: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict) and query.get("query"):
            exprs.append(query["query"])
    return exprs


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads: identifiers outside label matchers, grouping clauses, strings,
    ranges and function calls."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"label_values\(([^,)]*),[^)]*\)", r"\1", text)  # Grafana's: the label is not a metric
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(0)
        following = text[match.end() :].lstrip()[:1]
        if name in _FUNCTIONS_AND_KEYWORDS or following == "(" or name[0].isdigit():
            continue
        names.add(name)
    return names


def exported_series(exposition: str) -> set[str]:
    """Every series name a /metrics page can carry, declared families without samples yet included."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names
