"""StatsD line parsing, following statsd_exporter's pkg/line rule for rule.

A line is `name[tags]:value|type[|@rate][|#dogstatsd:tags]`; tags may come InfluxDB style
(`name,k=v,k2=v2`), Librato style (`name#k=v`), SignalFX style (`name[k=v]`) or DogStatsD
style (`|#k:v,k2:v2`); mixing name tags and DogStatsD tags is an error. Several samples
may share a name (`name:1|c:2|c`), and DogStatsD extended aggregation packs several
timer values in one sample (`name:1:2:3|ms`). Types: `c` counter (divided by the sample
rate), `g` gauge (a leading `+` or `-` makes it a delta), `ms` timer (converted to
seconds and repeated 1/rate times), `h`/`d` histogram/distribution (no conversion).
Sets (`s`) are refused as statsd_exporter refuses them.

Errors are counted by the same reasons statsd_exporter uses for
`statsd_exporter_sample_errors_total{reason=...}`.
"""

from __future__ import annotations

from collections import Counter as _Tally
from typing import NamedTuple

COUNTER, GAUGE, OBSERVER = "counter", "gauge", "observer"


class Event(NamedTuple):
    kind: str  # counter | gauge | observer
    name: str  # the StatsD name, tags removed
    value: float
    relative: bool
    labels: dict[str, str]


class ParseStats:
    """What the parser saw, with statsd_exporter's counter names in mind."""

    __slots__ = ("samples", "sample_errors", "tags", "tag_errors")

    def __init__(self) -> None:
        self.samples = 0
        self.sample_errors: _Tally[str] = _Tally()
        self.tags = 0
        self.tag_errors = 0


_CACHE_LIMIT = 50_000
_escaped: dict[str, str] = {}
# name+tags part of a line -> (metric name, tag labels); only heads that parsed cleanly
_heads: dict[str, tuple[str, dict[str, str]]] = {}


def escape_metric_name(name: str) -> str:
    """statsd_exporter's mapper.EscapeMetricName: [a-zA-Z0-9_] kept, anything else -> `_`.

    A leading digit gets a `_` prefix, and a run of dashes after the first one is
    dropped (`a--b` -> `a_b`), as statsd_exporter does. Memoized: names repeat.
    """
    try:
        return _escaped[name]
    except KeyError:
        pass
    escaped = _escape(name)
    if len(_escaped) >= _CACHE_LIMIT:
        _escaped.clear()
    _escaped[name] = escaped
    return escaped


def _escape(name: str) -> str:
    if not name:
        return ""
    if name.isascii() and (name.replace("_", "a").isalnum()) and not name[0].isdigit():
        return name
    out = ["_"] if "0" <= name[0] <= "9" else []
    prev = ""
    for c in name:
        if ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "_":
            out.append(c)
        elif c == "-" and prev == "-":
            continue
        else:
            out.append("_")
        prev = c
    return "".join(out)


def _parse_tag(tag: str, sep: str, labels: dict[str, str], stats: ParseStats) -> None:
    if not tag:
        stats.tag_errors += 1
        return
    i = tag.find(sep)
    if i < 0 or i == 0 or i == len(tag) - 1:
        stats.tag_errors += 1
        return
    labels[escape_metric_name(tag[:i])] = tag[i + 1 :]


def _parse_tag_list(component: str, sep: str, labels: dict[str, str], stats: ParseStats, dogstatsd: bool) -> None:
    parts = component.split(",")
    if parts and parts[-1] == "":
        parts.pop()  # a trailing separator ends the list, it is not an empty tag
    for tag in parts:
        if dogstatsd and tag.startswith("#"):
            tag = tag[1:]
        _parse_tag(tag, sep, labels, stats)


def _parse_name_and_tags(name: str, labels: dict[str, str], stats: ParseStats) -> str:
    start, end = name.find("["), name.find("]")
    if start >= 0 and end >= 0:
        _parse_tag_list(name[start + 1 : end], "=", labels, stats, False)
        return name[:start] + name[end + 1 :]
    if (start >= 0) != (end >= 0):
        stats.tag_errors += 1
        return name
    for i, c in enumerate(name):
        if c == "#" or c == ",":
            _parse_tag_list(name[i + 1 :], "=", labels, stats, False)
            return name[:i]
    return name


def go_float(text: str) -> float:
    """strconv.ParseFloat's accepted forms, near enough: no spaces, no underscores."""
    if not text or text != text.strip() or "_" in text:
        raise ValueError(text)
    return float(text)


def parse_line(line: str, stats: ParseStats) -> list[Event]:
    """Events for one line; malformed parts are counted in `stats` and skipped."""
    if not line:
        return []
    head, sep, rest = line.partition(":")
    if not sep or not head:
        stats.sample_errors["malformed_line"] += 1
        return []
    # The labels dict may be shared with the cache and earlier events: copy before changing it.
    cached = _heads.get(head)
    if cached is not None:
        metric, labels = cached
    else:
        labels = {}
        errors_before = stats.tag_errors
        metric = _parse_name_and_tags(head, labels, stats) if ("," in head or "#" in head or "[" in head or "]" in head) else head
        if stats.tag_errors == errors_before:
            if len(_heads) >= _CACHE_LIMIT:
                _heads.clear()
            _heads[head] = (metric, labels)
    dogstatsd = "|#" in rest
    if dogstatsd:
        if labels:
            stats.sample_errors["mixed_tagging_styles"] += 1
            return []
        labels = {}
    parts = rest.split("|", 2)
    if len(parts) < 2:
        stats.sample_errors["not_enough_parts_after_colon"] += 1
        return []
    if ":" in parts[0]:
        if parts[1] not in ("ms", "h", "d"):
            stats.sample_errors["invalid_extended_aggregate_type"] += 1
            return []
        suffix = rest.split("|", 1)[1]
        samples = [f"{v}|{suffix}" for v in parts[0].split(":")]
    elif dogstatsd:
        samples = [rest]
    else:
        samples = rest.split(":")

    events: list[Event] = []
    for sample in samples:
        stats.samples += 1
        components = sample.split("|")
        if not 2 <= len(components) <= 6:
            stats.sample_errors["malformed_component"] += 1
            continue
        value_text, stat_type = components[0], components[1]
        relative = value_text[:1] in ("+", "-")
        try:
            value = go_float(value_text)
        except ValueError:
            stats.sample_errors["malformed_value"] += 1
            continue
        repeat = 1
        if len(components) >= 3:
            extras = components[2:]
            if any(not c for c in extras):
                stats.sample_errors["malformed_component"] += 1
                continue
            bad = False
            for component in extras:
                first = component[0]
                if first == "@":
                    try:
                        rate = go_float(component[1:])
                    except ValueError:
                        stats.sample_errors["invalid_sample_factor"] += 1
                        rate = 0.0
                    if rate == 0:
                        rate = 1.0
                    if stat_type == "c":
                        value /= rate
                    elif stat_type in ("ms", "h", "d"):
                        repeat = int(1 / rate)
                elif first == "#":
                    _parse_tag_list(component[1:], ":", labels, stats, True)
                elif first == "c":
                    if component.startswith("c:") and len(component) > 2:
                        labels = {**labels, "container_id": component[2:]}
                    else:
                        stats.sample_errors["malformed_container_id"] += 1
                        bad = True
                        break
                elif first == "T":
                    pass  # DogStatsD timestamp: ignored, as statsd_exporter does
                else:
                    stats.sample_errors["invalid_sample_factor"] += 1
                    bad = True
                    break
            if bad:
                continue
        if labels:
            stats.tags += 1
        if stat_type == "c":
            kind = COUNTER
        elif stat_type == "g":
            kind = GAUGE
        elif stat_type == "ms":
            kind, value = OBSERVER, value / 1000.0  # StatsD milliseconds -> Prometheus seconds
        elif stat_type in ("h", "d"):
            kind = OBSERVER
        else:  # sets ("s") and unknown types
            stats.sample_errors["illegal_event"] += repeat
            continue
        for _ in range(repeat):
            events.append(Event(kind, metric, value, relative, labels))
    return events
