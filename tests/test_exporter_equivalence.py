"""The embedded exporter against statsd_exporter's documented behaviour, on real Airflow lines.

tests/data/airflow_statsd_lines.txt holds 8.6k lines captured from a real Airflow 3.3.2
stack (api-server, scheduler, dag-processor, triggerer; statsd_influxdb_enabled; see
tests/data/capture_airflow_statsd.py). The expected exposition is computed here by a
separate, plain reading of statsd_exporter's README:

- "Metrics that don't match any mapping ... are translated into Prometheus metrics
  without any labels and with any non-alphanumeric characters, including periods,
  translated into underscores"; InfluxDB tags (`name,k=v:...`) become labels.
- StatsD counter -> Prometheus counter (values added, name unchanged), gauge -> gauge
  (a value sets, `+`/`-` adds), timer -> summary (default) or histogram, "The exporter
  converts all timer observations to seconds"; default quantiles 0.5, 0.9, 0.99 with
  errors 0.05, 0.01, 0.001; default histogram buckets .005 ... 10.
- mapping.yml's own rules (drops, renames, labels, histograms), restated below as
  plain Python, not through the exporter's matcher.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import pytest
from exporter_support import AIRFLOW_LINES, MAPPING, Exposition, parse_exposition

from mlflowctl.metrics.exporter import StatsdExporter
from mlflowctl.metrics.statsd_mapping import load_mapping

LINE_RE = re.compile(r"^(?P<name>[^,:]+)(?:,(?P<tags>[^:]*))?:(?P<value>[-+]?[0-9.]+)\|(?P<type>c|g|ms)(?:\|@(?P<rate>[0-9.]+))?$")
DEFAULT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
QUANTILES = {0.5: 0.05, 0.9: 0.01, 0.99: 0.001}
OWN_PREFIXES = ("statsd_exporter_", "mlwf_exporter_")


def read_lines() -> list[str]:
    return [line for line in AIRFLOW_LINES.read_text().splitlines() if line]


def parsed(lines):
    for line in lines:
        m = LINE_RE.match(line)
        assert m, f"captured line not in Airflow's InfluxDB-tagged form: {line!r}"
        tags = dict(t.split("=", 1) for t in m["tags"].split(",")) if m["tags"] else {}
        yield m["name"], tags, m["value"], m["type"], float(m["rate"] or 1)


def default_name(statsd_name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", statsd_name)


LEGACY_DROP = [  # mapping.yml's legacy-name drops, as regular expressions over whole names
    r"airflow\.ti\.start\.[^.]*\.[^.]*", r"airflow\.ti\.[^.]*\.[^.]*\.[^.]*\.[^.]*", r"airflow\.dag\.[^.]*\.[^.]*\.[^.]*",
    r"airflow\.dagrun\.duration\.[^.]*\.[^.]*", r"airflow\.dagrun\.schedule_delay\.[^.]*",
    r"airflow\.dagrun\.dependency-check\.[^.]*", r"airflow\.dagrun\.[^.]*\.first_task_scheduling_delay",
    r"airflow\.executor\.[^.]*\.[^.]*", r"airflow\.pool\.[^.]*\.[^.]*", r"airflow\.dag_processing\.last_duration\.[^.]*\.[^.]*",
    r"airflow\.dag_processing\.last_run\.seconds_ago\.[^.]*", r"airflow\.triggers\.running\.[^.]*",
    r"airflow\.triggerer\.capacity_left\.[^.]*", r"airflow\.task_removed_from_dag\.[^.]*",
    r"airflow\.task_restored_to_dag\.[^.]*", r"airflow\.local_task_job\.task_exit\.[^.]*\.[^.]*\.[^.]*\.[^.]*",
    r"airflow\.(operator_failures|operator_successes|task_instance_created)_.+",
]


def mapped(statsd_name: str, stat_type: str, tags: dict) -> tuple[str, dict, str] | None:
    """What mapping.yml says for one metric: (name, labels, observer type) or None if dropped."""
    kind = {"c": "counter", "g": "gauge", "ms": "observer"}[stat_type]
    parts = statsd_name.split(".")
    if kind == "observer" and parts[:3] == ["airflow", "dagrun", "duration"] and len(parts) == 4:
        return "airflow_dagrun_duration", {**tags, "state": parts[3]}, "summary"
    if kind == "observer" and parts[:2] == ["airflow", "scheduler"] and len(parts) == 3:
        return f"airflow_scheduler_{parts[2]}", tags, "histogram"
    if any(re.fullmatch(p, statsd_name) for p in LEGACY_DROP):
        return None
    return default_name(statsd_name), tags, "summary"


def expected_exposition(lines, mapping: bool) -> tuple[dict[str, str], dict, dict]:
    """(types, plain samples, observations by series) as the README describes them."""
    types: dict[str, str] = {}
    values: dict = {}
    observations: dict = defaultdict(list)
    for name, tags, value_text, stat_type, rate in parsed(lines):
        if mapping:
            result = mapped(name, stat_type, tags)
            if result is None:
                continue
            prom_name, labels, observer = result
        else:
            prom_name, labels, observer = default_name(name), tags, "summary"
        key = frozenset(labels.items())
        value = float(value_text)
        # StatsD sampling: a counter sampled at rate r counts value/r; a gauge ignores the
        # rate; a timer sampled at r stands for 1/r observations.
        if stat_type == "c":
            types[prom_name] = "counter"
            values[(prom_name, key)] = values.get((prom_name, key), 0.0) + value / rate
        elif stat_type == "g":
            types[prom_name] = "gauge"
            if value_text[0] in "+-":
                values[(prom_name, key)] = values.get((prom_name, key), 0.0) + value
            else:
                values[(prom_name, key)] = value
        else:
            types[prom_name] = observer
            observations[(prom_name, key)].extend([value / 1000.0] * int(1 / rate))
    return types, values, observations


def check_quantile(got: float, observed: list[float], q: float, error: float) -> None:
    """statsd_exporter's summaries guarantee the q-quantile within rank error `error`."""
    ordered = sorted(observed)
    n = len(ordered)
    lo = ordered[max(0, math.floor((q - error) * n) - 1)]
    hi = ordered[min(n - 1, math.ceil((q + error) * n))]
    assert lo <= got <= hi, (q, got, lo, hi)


def check(exposition: Exposition, types, values, observations) -> None:
    own = {n for n in exposition.types if n.startswith(OWN_PREFIXES)}
    assert {n: t for n, t in exposition.types.items() if n not in own} == types
    expected_samples = dict(values)
    for (name, key), observed in observations.items():
        expected_samples[(name + "_count", key)] = len(observed)
        expected_samples[(name + "_sum", key)] = pytest.approx(sum(observed))
        if types[name] == "histogram":
            for bound in DEFAULT_BUCKETS:
                le = ("%g" % bound) if bound < 1 else f"{bound:.1f}"
                expected_samples[(name + "_bucket", key | {("le", le)})] = sum(1 for v in observed if v <= bound)
            expected_samples[(name + "_bucket", key | {("le", "+Inf")})] = len(observed)
        else:
            for q, error in QUANTILES.items():
                got = exposition.samples[(name, key | {("quantile", str(q))})]
                check_quantile(got, observed, q, error)
                expected_samples[(name, key | {("quantile", str(q))})] = got
    got_samples = {k: v for k, v in exposition.samples.items() if not k[0].startswith(OWN_PREFIXES)}
    assert set(got_samples) == set(expected_samples)
    for key, want in expected_samples.items():
        assert got_samples[key] == want, key


def run_exporter(lines, mapping_path) -> StatsdExporter:
    exporter = StatsdExporter(load_mapping(str(mapping_path) if mapping_path else None))
    for i in range(0, len(lines), 20):  # packets of 20 lines, as a busy sender batches them
        exporter.handle_lines("\n".join(lines[i : i + 20]))
    return exporter


def test_fixture_is_real_airflow_tagged_output():
    lines = read_lines()
    names = {name for name, *_ in parsed(lines)}
    assert len(lines) > 5000
    for must in ("airflow.scheduler_heartbeat", "airflow.ti.finish", "airflow.task.duration",
                 "airflow.dagrun.duration.success", "airflow.dagrun.duration.failed", "airflow.dagrun.schedule_delay",
                 "airflow.executor.open_slots", "airflow.pool.open_slots", "airflow.dag_processing.import_errors",
                 "airflow.triggerer_heartbeat", "airflow.dag_processor_heartbeat"):
        assert must in names
    states = {tags.get("state") for name, tags, *_ in parsed(lines) if name == "airflow.ti.finish"}
    assert states == {"success", "failed"}


def test_default_translation_matches_statsd_exporter_readme():
    lines = read_lines()
    exporter = run_exporter(lines, None)
    exposition = parse_exposition(exporter.exposition().decode())
    check(exposition, *expected_exposition(lines, mapping=False))
    # the exporter's own counters account for every line
    assert exposition.value("statsd_exporter_lines_total") == len(lines)
    assert exposition.value("statsd_exporter_events_unmapped_total") == len(lines)
    assert not exposition.series("statsd_exporter_sample_errors_total")


def test_repository_mapping_matches_its_rules_on_airflow_lines():
    lines = read_lines()
    exporter = run_exporter(lines, MAPPING)
    exposition = parse_exposition(exporter.exposition().decode())
    types, values, observations = expected_exposition(lines, mapping=True)
    check(exposition, types, values, observations)
    # the names the documentation and the recording rules rely on
    assert exposition.types["airflow_scheduler_heartbeat"] == "counter"
    assert exposition.value("airflow_scheduler_heartbeat") > 0
    assert exposition.types["airflow_task_duration"] == "summary"
    assert exposition.value("airflow_task_duration_count", dag_id="capture_fail", task_id="explode") == 1
    assert exposition.value("airflow_ti_finish", dag_id="capture_fail", task_id="explode", state="failed") == 1
    assert exposition.value("airflow_dagrun_duration_count", dag_id="capture_fail", run_type="manual", state="failed") == 1
    assert exposition.value("airflow_dagrun_duration_count", dag_id="capture_ok", run_type="manual", state="success") == 1
    assert exposition.types["airflow_scheduler_scheduler_loop_duration"] == "histogram"
    assert exposition.types["airflow_dag_processing_import_errors"] == "gauge"
    assert exposition.value("airflow_executor_open_slots", executor_class_name="LocalExecutor", status="open") == 4
    assert exposition.value("airflow_pool_open_slots", pool_name="default_pool") == 128
    # legacy names with ids folded in are gone
    assert not [n for n in exposition.names() if "capture_" in n or n.endswith("LocalExecutor")]
    dropped = exposition.value("statsd_exporter_events_actions_total", action="drop")
    assert dropped == sum(1 for name, tags, _, t, _ in parsed(lines) if mapped(name, t, tags) is None)


def test_counter_comments_keep_the_plain_name():
    """TYPE/HELP say `airflow_scheduler_heartbeat`, as client_golang writes them, not `..._total`."""
    exporter = run_exporter(["airflow.scheduler_heartbeat:1|c"], MAPPING)
    text = exporter.exposition().decode()
    assert "# TYPE airflow_scheduler_heartbeat counter\n" in text
    assert "# HELP airflow_scheduler_heartbeat Scheduler heartbeats" in text
    assert "airflow_scheduler_heartbeat_total" not in text
    assert "\nairflow_scheduler_heartbeat 1.0\n" in text
    # the exporter's own counters are client_golang `_total` names in both exporters
    assert "# TYPE statsd_exporter_lines_total counter\n" in text
