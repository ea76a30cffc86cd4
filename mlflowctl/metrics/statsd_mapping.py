"""statsd_exporter's mapping file format and matching rules, re-implemented for the embedded exporter.

The same YAML file (`stack/statsd/mapping.yml`) feeds prom/statsd-exporter on the docker
backend and `mlflowctl.metrics.exporter` on the local one, so this module follows
statsd_exporter (pkg/mapper, v0.20+ format) rule for rule:

- `mappings:` is a list; each has `match`, `name`, optional `labels`, `match_type`
  (glob | regex), `match_metric_type` (counter | gauge | observer), `action` (map | drop),
  `observer_type` (summary | histogram), `summary_options` / `histogram_options`,
  `honor_labels`, `help`, `ttl`, `scale`. `defaults:` sets observer_type, match_type,
  ttl, summary_options, histogram_options, glob_disable_ordering. Unknown keys are an
  error, as statsd_exporter parses strictly; so are the pre-0.20 keys `timer_type`,
  `buckets` and `quantiles`, which it no longer accepts either.
- Glob: `*` stands for exactly one dot-separated component; the first matching rule in
  file order wins (the most specific one with `glob_disable_ordering: true`). A rule
  whose exact match string is already a prefix state of an earlier rule never matches,
  and a repeated match string keeps the first rule's result at the later position:
  both are quirks of statsd_exporter's FSM, kept so the two exporters agree.
  Templates: `$1` or `${1}`; a reference followed by name characters (`$1_total`) or
  out of range expands to nothing, as in statsd_exporter; write `${1}_total`.
- Regex rules run after all glob rules, in order, unanchored (RE2 and Python `re` agree
  on the patterns a mapping file uses); `$1`, `${1}`, `${name}` expand as Go's
  `Regexp.ExpandString` does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from mlflowctl.errors import UsageError

COUNTER, GAUGE, OBSERVER = "counter", "gauge", "observer"
METRIC_TYPES = (COUNTER, GAUGE, OBSERVER)

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # client_golang DefBuckets
DEFAULT_QUANTILES = ((0.5, 0.05), (0.9, 0.01), (0.99, 0.001))
DEFAULT_MAX_AGE = 600.0  # client_golang DefMaxAge: 10 minutes
DEFAULT_AGE_BUCKETS = 5
DEFAULT_BUF_CAP = 500

_STATSD_METRIC = r"[a-zA-Z_]([a-zA-Z0-9_\-])*"
_STATSD_METRIC_SUBSEQUENT = r"[a-zA-Z0-9_]([a-zA-Z0-9_\-])*"
_TEMPLATE_REF = r"(\$\{?\d+\}?)"
_METRIC_LINE_RE = re.compile(rf"^(\*|{_STATSD_METRIC})(\.\*|\.{_STATSD_METRIC_SUBSEQUENT})*$")
_METRIC_NAME_RE = re.compile(rf"^([a-zA-Z_]|{_TEMPLATE_REF})([a-zA-Z0-9_]|{_TEMPLATE_REF})*$")
_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]+$")  # sic: statsd_exporter wants 2+ characters
_GLOB_TEMPLATE_RE = re.compile(r"\$\{?([a-zA-Z0-9_\$]+)\}?")
_GO_EXPAND_RE = re.compile(r"\$(\$|\{([a-zA-Z0-9_]+)\}|([a-zA-Z0-9_]+))")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

_MAPPING_KEYS = {
    "match", "name", "labels", "honor_labels", "observer_type", "match_type", "help", "action",
    "match_metric_type", "ttl", "summary_options", "histogram_options", "scale",
}
_DEFAULTS_KEYS = {"observer_type", "match_type", "glob_disable_ordering", "ttl", "summary_options", "histogram_options"}
_SUMMARY_KEYS = {"quantiles", "max_age", "age_buckets", "buf_cap"}
_HISTOGRAM_KEYS = {"buckets", "native_histogram_bucket_factor", "native_histogram_max_buckets"}
_REMOVED_KEYS = {
    "timer_type": "observer_type",
    "buckets": "histogram_options: {buckets: ...}",
    "quantiles": "summary_options: {quantiles: ...}",
}


class MappingError(UsageError):
    """The mapping file is unreadable or not in statsd_exporter's format."""


@dataclass(frozen=True)
class SummaryOptions:
    quantiles: tuple[tuple[float, float], ...] = DEFAULT_QUANTILES
    max_age: float = DEFAULT_MAX_AGE
    age_buckets: int = DEFAULT_AGE_BUCKETS
    buf_cap: int = DEFAULT_BUF_CAP


@dataclass(frozen=True)
class HistogramOptions:
    buckets: tuple[float, ...] = DEFAULT_BUCKETS


@dataclass(frozen=True)
class Mapping:
    """One rule of the file, after defaults were applied. `name`/`labels` may hold templates."""

    match: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    match_type: str = "glob"
    match_metric_type: str = ""
    action: str = "map"
    observer_type: str = ""  # "" means: the defaults' observer type at use time
    summary: SummaryOptions | None = None
    histogram: HistogramOptions | None = None
    honor_labels: bool = False
    help: str = ""
    ttl: float = 0.0
    scale: float | None = None
    regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)
    capture_count: int = 0


@dataclass(frozen=True)
class Defaults:
    observer_type: str = ""
    match_type: str = "glob"
    glob_disable_ordering: bool = False
    ttl: float = 0.0
    summary: SummaryOptions = SummaryOptions()
    histogram: HistogramOptions = HistogramOptions()


@dataclass(frozen=True)
class MatchResult:
    """A matched rule with its name and labels expanded."""

    mapping: Mapping
    name: str
    labels: dict[str, str]


def parse_duration(value: Any, where: str) -> float:
    """A Go duration (`10m`, `1m30s`, `500ms`, `0`) in seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # yaml.v2 decodes a bare integer into time.Duration as nanoseconds
        return float(value) * 1e-9
    text = str(value).strip()
    if text in {"0", "+0", "-0"}:
        return 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    total, pos = 0.0, 0
    for m in _DURATION_PART_RE.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise MappingError(f"{where}: invalid duration {value!r} (use e.g. 30s, 10m, 1h)")
    return sign * total


def _check_keys(data: dict, allowed: set[str], where: str) -> None:
    for key in data:
        if key in allowed:
            continue
        if key in _REMOVED_KEYS:
            raise MappingError(
                f"{where}: `{key}` was removed in statsd_exporter 0.20; use `{_REMOVED_KEYS[key]}`"
            )
        raise MappingError(f"{where}: unknown key `{key}`")


def _as_float(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise MappingError(f"{where}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise MappingError(f"{where}: expected a number, got {value!r}") from None


def _summary_options(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise MappingError(f"{where}: summary_options must be a mapping")
    _check_keys(data, _SUMMARY_KEYS, where)
    out: dict[str, Any] = {}
    if data.get("quantiles"):
        quantiles = []
        for i, q in enumerate(data["quantiles"]):
            if not isinstance(q, dict) or set(q) - {"quantile", "error"}:
                raise MappingError(f"{where}.quantiles[{i}]: expected {{quantile: 0.9, error: 0.01}}")
            quantiles.append((_as_float(q.get("quantile", 0), where), _as_float(q.get("error", 0), where)))
        out["quantiles"] = tuple(quantiles)
    if data.get("max_age"):
        out["max_age"] = parse_duration(data["max_age"], f"{where}.max_age")
    if data.get("age_buckets"):
        out["age_buckets"] = int(data["age_buckets"])
    if data.get("buf_cap"):
        out["buf_cap"] = int(data["buf_cap"])
    return out


def _histogram_options(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise MappingError(f"{where}: histogram_options must be a mapping")
    _check_keys(data, _HISTOGRAM_KEYS, where)
    out: dict[str, Any] = {}
    if data.get("buckets"):
        buckets = tuple(sorted(_as_float(b, f"{where}.buckets") for b in data["buckets"]))
        out["buckets"] = tuple(b for b in buckets if not math.isinf(b))
    return out


def _enum(value: Any, allowed: dict[str, str], what: str, where: str) -> str:
    text = "" if value is None else str(value)
    if text not in allowed:
        raise MappingError(f"{where}: invalid {what} {text!r}")
    return allowed[text]


_OBSERVER_TYPES = {"histogram": "histogram", "summary": "summary", "": "summary"}
_MATCH_TYPES = {"glob": "glob", "regex": "regex", "": "glob"}
_ACTIONS = {"drop": "drop", "map": "map", "": "map"}
_MATCH_METRIC_TYPES = {"counter": COUNTER, "gauge": GAUGE, "observer": OBSERVER, "": ""}


class Mapper:
    """Maps a StatsD metric name and type to a rule, as statsd_exporter's MetricMapper does."""

    def __init__(self, mappings: list[Mapping], defaults: Defaults) -> None:
        self.mappings = mappings
        self.defaults = defaults
        self._cache: dict[tuple[str, str], MatchResult | None] = {}
        self._regex_rules = [m for m in mappings if m.match_type == "regex"]
        # Per StatsD metric type: (priority, rule, fields) of every glob rule that can
        # produce a result, emulating the FSM statsd_exporter builds from the rules.
        self._globs: dict[str, list[tuple[int, Mapping, tuple[str, ...]]]] = {t: [] for t in METRIC_TYPES}
        states: dict[str, set[tuple[str, ...]]] = {t: set() for t in METRIC_TYPES}
        results: dict[str, dict[tuple[str, ...], list]] = {t: {} for t in METRIC_TYPES}
        priority = 0
        for rule in mappings:
            if rule.match_type != "glob":
                continue
            fields = tuple(rule.match.split("."))
            for metric_type in [rule.match_metric_type] if rule.match_metric_type else METRIC_TYPES:
                existed = fields in states[metric_type]
                for i in range(1, len(fields) + 1):
                    states[metric_type].add(fields[:i])
                entry = results[metric_type].get(fields)
                if entry is None and not existed:
                    results[metric_type][fields] = [priority, rule]
                elif entry is not None:
                    entry[0] = priority  # the FSM moves the state's priority, keeps its result
            priority += 1
        live = {id(rule) for per_type in results.values() for _, rule in per_type.values()}
        #: glob rules statsd_exporter's FSM will never match (pattern already a state of an earlier rule)
        self.dead_rules = [m for m in mappings if m.match_type == "glob" and id(m) not in live]
        for metric_type in METRIC_TYPES:
            rules = [(p, rule, fields) for fields, (p, rule) in results[metric_type].items()]
            if self.defaults.glob_disable_ordering:
                # most specific wins: compare left to right, a literal beats `*`
                rules.sort(key=lambda r: tuple(1 if f == "*" else 0 for f in r[2]))
            else:
                rules.sort(key=lambda r: r[0])
            self._globs[metric_type] = rules

    def get(self, statsd_name: str, metric_type: str) -> MatchResult | None:
        key = (statsd_name, metric_type)
        try:
            return self._cache[key]
        except KeyError:
            pass
        result = self._lookup(statsd_name, metric_type)
        if len(self._cache) >= 20000:
            self._cache.clear()
        self._cache[key] = result
        return result

    def _lookup(self, statsd_name: str, metric_type: str) -> MatchResult | None:
        fields = statsd_name.split(".")
        n = len(fields)
        for _, rule, pattern in self._globs[metric_type]:
            if len(pattern) != n:
                continue
            captures = []
            for want, got in zip(pattern, fields):
                if want == "*":
                    captures.append(got)
                elif want != got:
                    break
            else:
                return MatchResult(
                    rule,
                    _format_glob(rule.name, captures),
                    {k: _format_glob(v, captures) for k, v in rule.labels},
                )
        for rule in self._regex_rules:
            assert rule.regex is not None
            m = rule.regex.search(statsd_name)
            if m is None:
                continue
            if rule.match_metric_type and rule.match_metric_type != metric_type:
                continue
            return MatchResult(rule, _go_expand(rule.name, m), {k: _go_expand(v, m) for k, v in rule.labels})
        return None


def _format_glob(template: str, captures: list[str]) -> str:
    """statsd_exporter's fsm.TemplateFormatter: `$n`/`${n}`, bad references expand to ''."""
    if "$" not in template:
        return template

    def sub(m: re.Match[str]) -> str:
        ref = m.group(1)
        if ref.isdigit() and 1 <= int(ref) <= len(captures):
            return captures[int(ref) - 1]
        return ""

    return _GLOB_TEMPLATE_RE.sub(sub, template)


def _go_expand(template: str, m: re.Match[str]) -> str:
    """Go's Regexp.ExpandString: `$1`, `${1}`, `$name`, `${name}`, `$$`; unknown names -> ''."""

    def sub(ref: re.Match[str]) -> str:
        if ref.group(1) == "$":
            return "$"
        name = ref.group(2) or ref.group(3)
        try:
            group = m.group(int(name)) if name.isdigit() else m.group(name)
        except (IndexError, ValueError):
            return ""
        return group or ""

    return _GO_EXPAND_RE.sub(sub, template)


def parse_mapping(data: Any, source: str = "mapping") -> Mapper:
    """Build a Mapper from the decoded YAML document; MappingError on anything invalid."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MappingError(f"{source}: the top level must be a mapping with `mappings:`")
    _check_keys(data, {"defaults", "mappings"}, source)
    raw_defaults = data.get("defaults") or {}
    if not isinstance(raw_defaults, dict):
        raise MappingError(f"{source}: defaults must be a mapping")
    _check_keys(raw_defaults, _DEFAULTS_KEYS, f"{source}: defaults")
    where = f"{source}: defaults"
    summary_defaults = SummaryOptions(**_summary_options(raw_defaults.get("summary_options") or {}, where))
    histogram_defaults = HistogramOptions(**_histogram_options(raw_defaults.get("histogram_options") or {}, where))
    observer_default = raw_defaults.get("observer_type")
    defaults = Defaults(
        observer_type="" if observer_default in (None, "") else _enum(observer_default, _OBSERVER_TYPES, "observer_type", where),
        match_type=_enum(raw_defaults.get("match_type"), _MATCH_TYPES, "match_type", where),
        glob_disable_ordering=bool(raw_defaults.get("glob_disable_ordering", False)),
        ttl=parse_duration(raw_defaults["ttl"], f"{where}.ttl") if raw_defaults.get("ttl") else 0.0,
        summary=summary_defaults,
        histogram=histogram_defaults,
    )
    raw_mappings = data.get("mappings") or []
    if not isinstance(raw_mappings, list):
        raise MappingError(f"{source}: mappings must be a list")
    mappings = []
    for i, raw in enumerate(raw_mappings):
        where = f"{source}: mappings[{i}]"
        if not isinstance(raw, dict):
            raise MappingError(f"{where}: each mapping must be a mapping with match/name")
        _check_keys(raw, _MAPPING_KEYS, where)
        match = str(raw.get("match", ""))
        name = "" if raw.get("name") is None else str(raw.get("name"))
        where = f"{source}: mappings[{i}] ({match})"
        labels = raw.get("labels") or {}
        if not isinstance(labels, dict):
            raise MappingError(f"{where}: labels must be a mapping")
        for key in labels:
            if not _LABEL_NAME_RE.match(str(key)):
                raise MappingError(f"{where}: invalid label key: {key}")
        if not name:
            raise MappingError(f"{where}: metric mapping didn't set a metric name")
        if not _METRIC_NAME_RE.match(name):
            raise MappingError(f"{where}: metric name {name!r} is not a valid Prometheus name or template")
        match_type = _enum(raw.get("match_type"), _MATCH_TYPES, "match_type", where) if raw.get("match_type") else defaults.match_type
        regex = None
        capture_count = 0
        if match_type == "glob":
            if not _METRIC_LINE_RE.match(match):
                raise MappingError(f"{where}: invalid match: {match}")
            capture_count = match.split(".").count("*")
        else:
            try:
                regex = re.compile(match)
            except re.error as exc:
                raise MappingError(f"{where}: invalid regex {match}: {exc}") from None
        observer_type = _enum(raw["observer_type"], _OBSERVER_TYPES, "observer_type", where) if raw.get("observer_type") else defaults.observer_type
        summary = histogram = None
        if raw.get("summary_options") is not None and observer_type == "histogram":
            raise MappingError(f"{where}: cannot use histogram observer and summary options at the same time")
        if raw.get("histogram_options") is not None and observer_type == "summary":
            raise MappingError(f"{where}: cannot use summary observer and histogram options at the same time")
        if observer_type == "histogram" or raw.get("histogram_options") is not None:
            histogram = replace(defaults.histogram, **_histogram_options(raw.get("histogram_options") or {}, where))
        if observer_type != "histogram":
            # a mapping's summary_options overrides only the fields it sets
            summary = replace(defaults.summary, **_summary_options(raw.get("summary_options") or {}, where))
        ttl = parse_duration(raw["ttl"], f"{where}.ttl") if raw.get("ttl") else defaults.ttl
        scale = _as_float(raw["scale"], f"{where}.scale") if raw.get("scale") is not None else None
        mappings.append(
            Mapping(
                match=match,
                name=name,
                labels=tuple((str(k), "" if v is None else str(v)) for k, v in labels.items()),
                match_type=match_type,
                match_metric_type=_enum(raw.get("match_metric_type"), _MATCH_METRIC_TYPES, "match_metric_type", where),
                action=_enum(raw.get("action"), _ACTIONS, "action", where),
                observer_type=observer_type,
                summary=summary,
                histogram=histogram,
                honor_labels=bool(raw.get("honor_labels", False)),
                help=str(raw.get("help") or ""),
                ttl=ttl,
                scale=scale,
                regex=regex,
                capture_count=capture_count,
            )
        )
    return Mapper(mappings, defaults)


def load_mapping(path: str | None) -> Mapper:
    """Read and check a mapping file; no path means no rules (default translation only)."""
    if not path:
        return parse_mapping({})
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise MappingError(f"cannot read mapping file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise MappingError(f"mapping file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_mapping(data, source=str(path))
