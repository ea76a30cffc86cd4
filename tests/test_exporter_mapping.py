"""Mapping rules and line formats, case by case, as statsd_exporter's README describes them."""

from __future__ import annotations

import math
import textwrap

import pytest
import yaml
from exporter_support import MAPPING, parse_exposition

from mlflowctl.errors import UsageError
from mlflowctl.metrics.exporter import StatsdExporter
from mlflowctl.metrics.statsd_line import ParseStats, escape_metric_name, parse_line
from mlflowctl.metrics.statsd_mapping import MappingError, load_mapping, parse_mapping, parse_duration


def exporter_for(config: str = "") -> StatsdExporter:
    return StatsdExporter(parse_mapping(yaml.safe_load(textwrap.dedent(config)) if config else {}))


def expose(exporter: StatsdExporter, *lines: str):
    for line in lines:
        exporter.handle_lines(line)
    return parse_exposition(exporter.exposition().decode())


README_MAPPING = """
mappings:
- match: "test.dispatcher.*.*.*"
  name: "dispatcher_events_total"
  labels:
    processor: "$1"
    action: "$2"
    outcome: "$3"
    job: "test_dispatcher"
- match: "*.signup.*.*"
  name: "signup_events_total"
  labels:
    provider: "$2"
    outcome: "$3"
    job: "${1}_server"
"""


def test_readme_glob_example():
    got = expose(
        exporter_for(README_MAPPING),
        "test.dispatcher.FooProcessor.send.success:1|c",
        "foo_product.signup.facebook.failure:1|c",
        "test.web-server.foo.bar:1|c",
    )
    assert got.value("dispatcher_events_total", processor="FooProcessor", action="send", outcome="success", job="test_dispatcher") == 1
    assert got.value("signup_events_total", provider="facebook", outcome="failure", job="foo_product_server") == 1
    assert got.value("test_web_server_foo_bar") == 1


def test_name_templates_and_the_dollar_one_underscore_trap():
    exporter = exporter_for(
        """
        mappings:
        - match: "test.*.*.counter"
          name: "${2}_total"
          labels: {provider: "$1"}
        - match: "bad.*.counter"
          name: "$1_total"
        """
    )
    got = expose(exporter, "test.aws.requests.counter:2|c", "bad.x.counter:1|c")
    assert got.value("requests_total", provider="aws") == 2
    # `$1_total` reads as the capture named "1_total": nothing, so an empty name, an error
    assert got.value("statsd_exporter_events_error_total", reason="empty_metric_name") == 1


def test_first_matching_glob_wins_and_unordered_prefers_literals():
    ordered = """
    mappings:
    - {match: "a.*.c", name: "wild"}
    - {match: "a.b.c", name: "literal"}
    """
    assert expose(exporter_for(ordered), "a.b.c:1|c").names() >= {"wild"}
    unordered = "defaults: {glob_disable_ordering: true}\n" + textwrap.dedent(ordered)
    got = expose(exporter_for(unordered), "a.b.c:1|c")
    assert "literal" in got.names() and "wild" not in got.names()


def test_a_rule_that_is_a_prefix_of_an_earlier_one_never_matches():
    """statsd_exporter's FSM gives no result to a state an earlier rule created."""
    mapper = parse_mapping(yaml.safe_load("mappings:\n- {match: 'x.y.*', name: long}\n- {match: 'x.y', name: short}\n"))
    assert [m.match for m in mapper.dead_rules] == ["x.y"]
    assert mapper.get("x.y", "counter") is None
    assert parse_mapping(yaml.safe_load(MAPPING.read_text())).dead_rules == []


def test_match_metric_type_drop_and_regex():
    exporter = exporter_for(
        r"""
        mappings:
        - {match: "svc.*", match_metric_type: counter, name: "svc_events", labels: {kind: "$1"}}
        - {match: "svc.*", match_metric_type: gauge, name: "svc_level", labels: {kind: "$1"}}
        - {match: "noise.*", action: drop, name: dropped}
        - {match: '^app\.(\w+)\.latency$', match_type: regex, name: "app_latency", labels: {app: "$1"}}
        """
    )
    got = expose(exporter, "svc.a:1|c", "svc.a:7|g", "noise.x:1|c", "app.web.latency:250|ms")
    assert got.value("svc_events", kind="a") == 1
    assert got.value("svc_level", kind="a") == 7
    assert not [n for n in got.names() if n.startswith("noise")]
    assert got.value("app_latency_count", app="web") == 1
    assert got.value("app_latency_sum", app="web") == 0.25
    assert got.value("statsd_exporter_events_actions_total", action="drop") == 1


def test_mapping_labels_beat_tags_unless_honor_labels():
    exporter = exporter_for(
        """
        mappings:
        - {match: "a", name: a, labels: {env: fixed}}
        - {match: "b", name: b, labels: {env: fixed}, honor_labels: true}
        """
    )
    got = expose(exporter, "a,env=tag:1|c", "b,env=tag:1|c", "b:1|c")
    assert got.value("a", env="fixed") == 1
    assert got.value("b", env="tag") == 1
    assert got.value("b", env="fixed") == 1


def test_histogram_buckets_summary_quantiles_and_scale():
    exporter = exporter_for(
        """
        mappings:
        - match: "h"
          name: h_seconds
          observer_type: histogram
          histogram_options: {buckets: [0.1, 1]}
        - match: "s"
          name: s_seconds
          summary_options:
            quantiles: [{quantile: 0.5, error: 0.05}]
        - {match: "kb", name: bytes, scale: 1024}
        """
    )
    got = expose(exporter, "h:50|ms", "h:500|ms", "h:5000|ms", *[f"s:{v}|ms" for v in range(1, 101)], "kb:2|g")
    assert got.types["h_seconds"] == "histogram"
    assert [got.value("h_seconds_bucket", le=le) for le in ("0.1", "1.0", "+Inf")] == [1, 2, 3]
    assert got.value("h_seconds_sum") == pytest.approx(5.55)
    assert got.types["s_seconds"] == "summary"
    assert set(got.series("s_seconds")) == {frozenset({("quantile", "0.5")})}
    assert 0.045 <= got.value("s_seconds", quantile="0.5") <= 0.055
    assert got.value("s_seconds_count") == 100
    assert got.value("bytes") == 2048


def test_summary_quantiles_forget_old_observations_but_count_and_sum_do_not():
    exporter = exporter_for("mappings:\n- {match: s, name: s, summary_options: {max_age: 1s}}\n")
    exporter.handle_lines("s:1000|ms")
    fam = exporter.families["s"]
    series = next(iter(fam.series.values()))
    series.window[0] = (series.window[0][0] - 5, series.window[0][1])  # observed 5 s ago
    got = parse_exposition(exporter.exposition().decode())
    assert math.isnan(got.value("s", quantile="0.5"))
    assert got.value("s_count") == 1 and got.value("s_sum") == 1


def test_ttl_expires_series():
    exporter = exporter_for("defaults: {ttl: 1m}\n")
    exporter.handle_lines("a:1|g")
    assert exporter.expire() == 0
    assert exporter.expire(now=exporter.families["a"].series[()].last + 61) == 1
    assert "a" not in parse_exposition(exporter.exposition().decode()).names()


def test_gauge_deltas_counters_and_sampling():
    got = expose(
        exporter_for(),
        "g:10|g", "g:+5|g", "g:-3|g",  # set, then deltas
        "c:1|c|@0.1",  # sampled at 10 %: counts 10
        "t:100|ms|@0.5",  # two observations
        "multi:1|c:2|c",  # two samples, one line
        "ext:1:2:3|ms",  # DogStatsD extended aggregation
        "neg:-1|c",  # refused
    )
    assert got.value("g") == 12
    assert got.value("c") == 10
    assert got.value("t_count") == 2
    assert got.value("multi") == 3
    assert got.value("ext_count") == 3 and got.value("ext_sum") == pytest.approx(0.006)
    assert "neg" not in got.names()
    assert got.value("statsd_exporter_events_error_total", reason="illegal_negative_counter") == 1


def test_tag_styles_become_labels():
    got = expose(
        exporter_for(),
        "influx,host=a,dc=x:1|c",
        "librato#host=a:1|c",
        "signalfx[host=a]:1|c",
        "dog:1|c|#host:a,dc:x",
        "mixed,host=a:1|c|#dc:x",
    )
    assert got.value("influx", host="a", dc="x") == 1
    assert got.value("librato", host="a") == 1
    assert got.value("signalfx", host="a") == 1
    assert got.value("dog", host="a", dc="x") == 1
    assert "mixed" not in got.names()
    assert got.value("statsd_exporter_sample_errors_total", reason="mixed_tagging_styles") == 1


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("no_colon", "malformed_line"),
        (":1|c", "malformed_line"),
        ("x:1", "not_enough_parts_after_colon"),
        ("x:abc|c", "malformed_value"),
        ("x:1|c|", "malformed_component"),
        ("x:1|s", "illegal_event"),
        ("x:1|zz", "illegal_event"),
        ("x:1|c|bogus", "invalid_sample_factor"),
        ("x:1:2|c", "invalid_extended_aggregate_type"),
        ("x:1|c\r", "illegal_event"),
    ],
)
def test_malformed_lines_are_counted_by_reason(line, reason):
    stats = ParseStats()
    events = parse_line(line, stats)
    assert events == [] and stats.sample_errors[reason] == 1


def test_invalid_utf8_is_a_malformed_line_and_the_rest_of_the_packet_survives():
    exporter = exporter_for()
    exporter.handle_packet(b"good:1|c\nbad\xff:1|c\nalso_good:2|g")
    got = parse_exposition(exporter.exposition().decode())
    assert got.value("good") == 1 and got.value("also_good") == 2
    assert got.value("statsd_exporter_sample_errors_total", reason="malformed_line") == 1
    assert got.value("statsd_exporter_lines_total") == 3


def test_type_conflicts_are_dropped_and_counted():
    got = expose(exporter_for(), "x:1|c", "x:1|g", "y:1|ms", "y_count:1|c")
    assert got.types["x"] == "counter" and got.value("x") == 1
    assert got.value("statsd_exporter_events_conflict_total", type="gauge", metric_name="x") == 1
    assert got.value("statsd_exporter_events_conflict_total", type="counter", metric_name="y_count") == 1


def test_same_name_may_carry_different_label_sets():
    got = expose(exporter_for(), "x,a=1:1|c", "x:1|c")
    assert got.value("x", a="1") == 1 and got.value("x") == 1


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [("a.b-c", "a_b_c"), ("a--b", "a_b"), ("1abc", "_1abc"), ("ok_name", "ok_name"), ("é.x", "__x"), ("", "")],
)
def test_escape_metric_name(raw, escaped):
    assert escape_metric_name(raw) == escaped


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("mappings:\n- {match: a, name: a, timer_type: histogram}", "removed in statsd_exporter 0.20; use `observer_type`"),
        ("mappings:\n- {match: a, name: a, buckets: [1]}", "histogram_options"),
        ("mappings:\n- {match: a, name: a, colour: red}", "unknown key `colour`"),
        ("mappings:\n- {match: a}", "didn't set a metric name"),
        ("mappings:\n- {match: a, name: a, labels: {x: y}}", "invalid label key: x"),
        ("mappings:\n- {match: 'a..b', name: a}", "invalid match"),
        ("mappings:\n- {match: a, name: '1bad'}", "not a valid Prometheus name"),
        ("mappings:\n- {match: a, name: a, observer_type: bogus}", "invalid observer_type"),
        ("mappings:\n- {match: '(', match_type: regex, name: a}", "invalid regex"),
        ("mappings:\n- {match: a, name: a, observer_type: histogram, summary_options: {}}", "at the same time"),
        ("defaults: {ttl: 5 parsecs}", "invalid duration"),
        ("[1, 2]", "top level"),
    ],
)
def test_bad_mapping_files_are_refused_with_one_clear_line(config, message):
    with pytest.raises(MappingError) as info:
        parse_mapping(yaml.safe_load(config), source="m.yml")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2


def test_load_mapping_file_errors(tmp_path):
    with pytest.raises(MappingError, match="cannot read mapping file"):
        load_mapping(str(tmp_path / "missing.yml"))
    bad = tmp_path / "bad.yml"
    bad.write_text("mappings: [\n")
    with pytest.raises(MappingError, match="not valid YAML"):
        load_mapping(str(bad))


def test_durations():
    assert parse_duration("1m30s", "x") == 90
    assert parse_duration("500ms", "x") == 0.5
    assert parse_duration("0", "x") == 0
    assert parse_duration("2h", "x") == 7200
