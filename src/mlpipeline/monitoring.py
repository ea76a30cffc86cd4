"""Health rules: pure functions from numbers to findings with a severity.

Stdlib only: ``monitoring_dag`` and ``mlwf health`` both import this module, and the CLI
must start instantly. Each ``check_*`` takes plain numbers (counts, ratios, ages in
seconds) and returns ``Finding`` objects; its thresholds default to those of
``mlpipeline.thresholds``. Fetching the numbers is the caller's business.

Boundaries: a value exactly *at* a threshold takes that threshold's severity for "at
least N" rules (failure counts, import errors) and stays on the better side for "more
than"/"less than" rules (heartbeat age, run duration, success ratio).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from mlpipeline.thresholds import LIMITS, Limits

OK, WARNING, CRITICAL = "ok", "warning", "critical"
SEVERITIES = (OK, WARNING, CRITICAL)
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    value: float | None
    threshold: float | None
    message: str
    subject: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in _RANK:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        return cls(**{k: data.get(k) for k in ("rule", "severity", "value", "threshold", "message", "subject")})


def severity_rank(severity: str) -> int:
    try:
        return _RANK[severity]
    except KeyError:
        raise ValueError(f"unknown severity {severity!r}; expected one of {', '.join(SEVERITIES)}") from None


def worst_severity(findings: Iterable[Finding | Mapping[str, Any]]) -> str:
    """The most severe severity among findings (``ok`` when there are none)."""
    worst = OK
    for f in findings:
        sev = f["severity"] if isinstance(f, Mapping) else f.severity
        if severity_rank(sev) > _RANK[worst]:
            worst = sev
    return worst


def at_least(severity: str, level: str) -> bool:
    """True when ``severity`` is ``level`` or worse."""
    return severity_rank(severity) >= severity_rank(level)


def _check_order(warning: float, critical: float, *, higher_is_worse: bool) -> None:
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x) for x in (warning, critical)):
        raise ValueError("thresholds must be numbers")
    if higher_is_worse and critical < warning:
        raise ValueError(f"critical ({critical}) must be >= warning ({warning})")
    if not higher_is_worse and critical > warning:
        raise ValueError(f"critical ({critical}) must be <= warning ({warning})")


def _count(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def check_success_ratio(
    successes: int,
    failures: int,
    *,
    warning: float = LIMITS["dag_run_success_ratio"].warning,
    critical: float = LIMITS["dag_run_success_ratio"].critical,
    subject: str | None = None,
) -> Finding:
    """Share of finished DAG runs that succeeded. Below ``critical`` -> critical, below ``warning`` -> warning."""
    _count("successes", successes)
    _count("failures", failures)
    _check_order(warning, critical, higher_is_worse=False)
    total = successes + failures
    where = f" for {subject}" if subject else ""
    if total == 0:
        return Finding("dag_run_success_ratio", OK, None, warning, f"no finished DAG runs{where}", subject)
    ratio = successes / total
    sev = CRITICAL if ratio < critical else WARNING if ratio < warning else OK
    limit = critical if sev == CRITICAL else warning
    msg = f"{successes}/{total} DAG runs succeeded{where} ({ratio:.0%}"
    msg += f", below {limit:.0%})" if sev != OK else ")"
    return Finding("dag_run_success_ratio", sev, round(ratio, 4), limit, msg, subject)


def _at_least_rule(
    rule: str, count: float, warning: float, critical: float, what: str, subject: str | None
) -> Finding:
    _count(what, count)
    _check_order(warning, critical, higher_is_worse=True)
    sev = CRITICAL if count >= critical else WARNING if count >= warning else OK
    limit = critical if sev == CRITICAL else warning
    where = f" in {subject}" if subject else ""
    return Finding(rule, sev, count, limit, f"{int(count)} {what}{where}", subject)


def check_task_failures(
    failed: int,
    *,
    warning: float = LIMITS["task_failures"].warning,
    critical: float = LIMITS["task_failures"].critical,
    subject: str | None = None,
) -> Finding:
    """Failed task instances in the window: at least ``warning`` -> warning, at least ``critical`` -> critical."""
    return _at_least_rule("task_failures", failed, warning, critical, "failed task instance(s)", subject)


def check_import_errors(
    count: int,
    *,
    warning: float = LIMITS["import_errors"].warning,
    critical: float = LIMITS["import_errors"].critical,
    subject: str | None = None,
) -> Finding:
    """DAG files that fail to import: at least ``warning`` -> warning, at least ``critical`` -> critical."""
    return _at_least_rule("import_errors", count, warning, critical, "DAG import error(s)", subject)


def _above_rule(rule: str, value: float, limits: Limits, message: str) -> Finding:
    _count(rule, value)
    _check_order(limits.warning, limits.critical, higher_is_worse=True)
    sev = CRITICAL if value >= limits.critical else WARNING if value >= limits.warning else OK
    return Finding(rule, sev, value, limits.critical if sev == CRITICAL else limits.warning, message)


def check_serving_error_rate(rate: float) -> Finding:
    """Share of prediction requests the model server answered with a 5xx."""
    return _above_rule("serving_error_rate", rate, LIMITS["serving_error_rate"], f"{rate:.2%} of predictions failed")


def check_serving_latency(p95_s: float) -> Finding:
    """95th percentile of the model server's prediction latency, in seconds."""
    return _above_rule("serving_latency_p95", p95_s, LIMITS["serving_latency_p95"], f"p95 {p95_s * 1000:.1f} ms")


def check_served_version(served: int, production: int, healthy: bool) -> Finding:
    """The model server serves the production version: warning while it differs (a load in
    progress looks the same for a second or two), critical when it refused production."""
    name = lambda n: f"v{int(n):04d}" if n else "nothing"  # noqa: E731
    if served == production:
        return Finding("served_version", OK, served, None, f"serving production {name(production)}")
    sev = WARNING if healthy else CRITICAL
    why = "" if healthy else " (it refused that version: GET /health says why)"
    return Finding("served_version", sev, served, None, f"serving {name(served)}, production is {name(production)}{why}")


def check_heartbeat_age(
    age_seconds: float | None,
    *,
    warning: float = LIMITS["scheduler_heartbeat"].warning,
    critical: float = LIMITS["scheduler_heartbeat"].critical,
    subject: str = "scheduler",
) -> Finding:
    """Seconds since a component's last heartbeat; ``None`` (never seen) is critical."""
    _check_order(warning, critical, higher_is_worse=True)
    if age_seconds is None:
        return Finding("scheduler_heartbeat", CRITICAL, None, critical, f"no {subject} heartbeat recorded", subject)
    _count("heartbeat age", age_seconds)
    sev = CRITICAL if age_seconds > critical else WARNING if age_seconds > warning else OK
    limit = critical if sev == CRITICAL else warning
    msg = f"last {subject} heartbeat {age_seconds:.0f}s ago"
    if sev != OK:
        msg += f" (more than {limit:.0f}s)"
    return Finding("scheduler_heartbeat", sev, round(age_seconds, 3), limit, msg, subject)


def check_long_running(
    durations: Mapping[str, float],
    *,
    warning: float = LIMITS["long_running_run"].warning,
    critical: float = LIMITS["long_running_run"].critical,
) -> list[Finding]:
    """One finding per running run longer than ``warning`` seconds; a single ok finding if none is."""
    _check_order(warning, critical, higher_is_worse=True)
    out: list[Finding] = []
    for subject, seconds in sorted(durations.items()):
        _count(f"duration of {subject}", seconds)
        if seconds <= warning:
            continue
        sev = CRITICAL if seconds > critical else WARNING
        limit = critical if sev == CRITICAL else warning
        out.append(
            Finding(
                "long_running_run", sev, round(seconds, 1), limit,
                f"{subject} running for {seconds / 60:.0f} min (more than {limit / 60:.0f} min)", subject,
            )
        )
    if not out:
        longest = max(durations.values(), default=None)
        out.append(
            Finding(
                "long_running_run", OK, None if longest is None else round(longest, 1), warning,
                f"{len(durations)} running run(s), none longer than {warning / 60:.0f} min",
            )
        )
    return out


def parse_time(value: str | dt.datetime | None) -> dt.datetime | None:
    """An ISO-8601 timestamp from the API as an aware datetime (naive means UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def age_seconds(then: str | dt.datetime | None, now: dt.datetime | None = None) -> float | None:
    """Seconds from ``then`` to ``now`` (UTC now by default); None when ``then`` is None."""
    start = parse_time(then)
    if start is None:
        return None
    now = parse_time(now) if now is not None else dt.datetime.now(dt.timezone.utc)
    return max(0.0, (now - start).total_seconds())


def summarize(findings: Iterable[Finding | Mapping[str, Any]]) -> dict[str, Any]:
    """A JSON-ready report: worst severity, counts per severity, the findings worst first."""
    items = [f if isinstance(f, Finding) else Finding.from_dict(f) for f in findings]
    items.sort(key=lambda f: (-_RANK[f.severity], f.rule, f.subject or ""))
    counts = {s: sum(1 for f in items if f.severity == s) for s in SEVERITIES}
    return {"worst": worst_severity(items), "counts": counts, "findings": [f.to_dict() for f in items]}
