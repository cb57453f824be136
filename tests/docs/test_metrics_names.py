"""Every metric the docs and manifests name exists on ``/metrics`` with that name, type and labels.

The operations page's metrics table and alert rules, the API page and the Kubernetes page (its Prometheus
adapter rule), the README, and the Helm chart's HPA are read as a user copies them into Prometheus:
a misspelt name or label there is a dashboard that stays empty or an alert that never fires.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import yaml
from prometheus_client import Metric

from app.config import Settings
from app.main import create_app
from app.runtime.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "deploy").rglob("*.yaml")),
    *sorted((ROOT / "deploy").rglob("*.tpl")),
]
OPERATIONS = ROOT / "docs" / "operations.md"
# Labels Prometheus adds to every series when it scrapes a pod, not the service's own.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}

_REFERENCE = re.compile(r"\b(glimpse_[a-z0-9_]*[a-z0-9])(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_TABLE_ROW = re.compile(r"^\| `(glimpse_[a-z_]+)(\{[^}]*\})?` \| ([a-z]+) \|", re.MULTILINE)


@functools.cache
def families() -> dict[str, Metric]:
    return {family.name: family for family in Metrics().registry.collect()}


@functools.cache
def label_names() -> dict[str, frozenset[str]]:
    """Family → its label names, from a registry whose every labelled metric has seen one series."""
    metrics = Metrics()
    metrics.observe_request("/predict", "POST", 200, 0.01)
    metrics.observe_images("/predict", 1)
    return {
        family.name: frozenset(key for sample in family.samples for key in sample.labels if key != "le")
        for family in metrics.registry.collect()
    }


def series_labels(name: str) -> frozenset[str] | None:
    """The label names a series of this name carries, or None when /metrics has no such name."""
    labels = label_names()
    for family in families().values():
        # A counter's series are …_total; a histogram is named by its family or one of its series.
        suffixes = {"counter": ("_total",), "histogram": ("", "_bucket", "_sum", "_count")}
        for suffix in suffixes.get(family.type, ("",)):
            if name == family.name + suffix:
                return labels[family.name] | ({"le"} if suffix == "_bucket" else frozenset())
    return None


def route_templates() -> set[str]:
    """The route templates the request counter labels requests with (``route``)."""
    return set(create_app(Settings()).openapi()["paths"]) | {"unmatched"}


def references() -> list[tuple[str, str, str | None]]:
    """(file, metric name, its braces or None) for every ``glimpse_…`` name in the docs and manifests."""
    found = []
    for path in TEXTS:
        for match in _REFERENCE.finditer(path.read_text()):
            found.append((str(path.relative_to(ROOT)), match.group(1), match.group(2)))
    return found


def test_docs_name_metrics_at_all() -> None:
    names = {name for _, name, _ in references()}
    assert {"glimpse_requests_total", "glimpse_queue_depth", "glimpse_queue_wait_seconds_bucket"} <= names


def test_every_named_metric_and_label_exists() -> None:
    routes = route_templates()
    problems = []
    for where, name, braces in references():
        labels = series_labels(name)
        if labels is None:
            problems.append(f"{where}: {name} is not on /metrics")
            continue
        if not braces:
            continue
        inner = braces[1:-1]
        matchers = _MATCHER.findall(inner)
        used = [label for label, _, _ in matchers] if matchers else re.findall(r"[a-z_]+", inner)
        for label in used:
            if label not in labels | TARGET_LABELS:
                problems.append(f"{where}: {name} has no label {label!r} (it has {sorted(labels)})")
        for label, operator, value in matchers:
            # Each alternative of a route matcher must select a real template (PromQL anchors regexes).
            alternatives = value.split("|") if operator == "=~" else [re.escape(value)]
            if label == "route" and operator in ("=", "=~"):
                for pattern in alternatives:
                    if not any(re.fullmatch(pattern, template) for template in routes):
                        problems.append(f"{where}: route {pattern!r} matches no route template")
    assert not problems, "\n".join(problems)


def test_metric_tables_give_the_real_types() -> None:
    types = {name: family.type for name, family in families().items()}
    rows = _TABLE_ROW.findall(OPERATIONS.read_text())
    assert rows, "docs/operations.md has no metrics table"
    for name, _, documented in rows:
        family = name.removesuffix("_total") if name.endswith("_total") else name
        assert types.get(family) == documented, f"{name}: documented as {documented}, is {types.get(family)}"
    assert {name.removesuffix("_total") for name, _, _ in rows} == set(types), "table and /metrics differ"


def test_alert_rules_parse_and_only_use_real_series() -> None:
    blocks = re.findall(r"^```yaml\n(.*?)^```$", OPERATIONS.read_text(), re.DOTALL | re.MULTILINE)
    rule_groups = [yaml.safe_load(block) for block in blocks if "groups:" in block]
    assert len(rule_groups) == 1, "one block of Prometheus alert rules"
    rules = rule_groups[0]["groups"][0]["rules"]
    assert all({"alert", "expr", "for"} <= set(rule) for rule in rules)
    for rule in rules:
        for name in re.findall(r"\bglimpse_[a-z_]+", rule["expr"]):
            assert series_labels(name) is not None, f"{rule['alert']}: {name} is not on /metrics"
