"""The plain data of a health report: what the renderers draw, `--json` prints and the exit code reads.

Rows grouped in sections, each with its status and the value that decided it; the
findings among them follow `mlpipeline.monitoring`'s vocabulary (rule, severity, threshold).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mlflowctl.errors import HealthThresholdError, MlwfError, UnhealthyError, UsageError
from mlpipeline import monitoring as rules

INFO, UNKNOWN = "info", "unknown"
SECTIONS = {
    "components": "Components",
    "dag_runs": "DAG runs",
    "task_failures": "Failures by task",
    "task_durations": "Durations by task",
    "scheduler": "Scheduler",
    "executor": "Executor and pools",
    "model_quality": "Model quality",
    "serving": "Model serving",
}
FAIL_ON = (rules.WARNING, rules.CRITICAL)


@dataclass
class Row:
    """One line of the report. `status` is a severity (ok|warning|critical) when a rule
    judged `value`, `info` when no rule applies, `unknown` when the source did not answer."""

    section: str
    name: str
    status: str
    value: float | str | None
    unit: str = ""
    detail: str = ""
    source: str = "api"
    rule: str | None = None
    threshold: float | None = None
    trend: list[float | None] | None = None

    @classmethod
    def judged(cls, section: str, name: str, finding: rules.Finding, *, unit: str = "", source: str = "api",
               detail: str | None = None, value: Any = None, trend=None) -> Row:
        return cls(
            section, name, finding.severity, finding.value if value is None else value, unit,
            finding.message if detail is None else detail, source, finding.rule, finding.threshold, trend,
        )

    @property
    def finding(self) -> rules.Finding | None:
        if self.rule is None or self.status not in rules.SEVERITIES:
            return None
        value = self.value if isinstance(self.value, (int, float)) else None
        return rules.Finding(self.rule, self.status, value, self.threshold, self.detail, self.name)


@dataclass
class HealthReport:
    generated_at: str
    window: str
    window_seconds: float
    airflow_url: str
    prometheus_url: str
    sources: dict[str, str]  # api / prometheus -> "ok" or why not
    notes: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    elapsed_seconds: float = 0.0

    @property
    def degraded(self) -> bool:
        return any(state != "ok" for state in self.sources.values())

    @property
    def findings(self) -> list[rules.Finding]:
        return [f for f in (row.finding for row in self.rows) if f is not None]

    @property
    def worst(self) -> str:
        return rules.worst_severity(self.findings)

    def section(self, name: str) -> list[Row]:
        return [row for row in self.rows if row.section == name]

    def to_dict(self) -> dict[str, Any]:
        summary = rules.summarize(self.findings)
        return {
            "generated_at": self.generated_at,
            "window": self.window,
            "window_seconds": self.window_seconds,
            "airflow_url": self.airflow_url,
            "prometheus_url": self.prometheus_url,
            "degraded": self.degraded,
            "sources": self.sources,
            "notes": self.notes,
            "worst": summary["worst"],
            "counts": summary["counts"],
            "sections": {name: [asdict(row) for row in self.section(name)] for name in SECTIONS},
            "findings": summary["findings"],
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


def exit_error(report: HealthReport, fail_on: str | None) -> MlwfError | None:
    """The error `mlwf health` exits with, if any.

    `--fail-on LEVEL` and a finding at LEVEL or worse -> HealthThresholdError (12);
    otherwise a degraded report (Prometheus or the API did not answer) -> UnhealthyError (9);
    otherwise None (exit 0). Findings alone never fail the command without --fail-on.
    """
    if fail_on is not None:
        if fail_on not in FAIL_ON:
            raise UsageError(f"--fail-on {fail_on!r}: use warning or critical")
        hits = [f for f in report.findings if rules.at_least(f.severity, fail_on)]
        if hits:
            hits.sort(key=lambda f: -rules.severity_rank(f.severity))
            names = "; ".join(f.message for f in hits[:3]) + (f" (+{len(hits) - 3} more)" if len(hits) > 3 else "")
            return HealthThresholdError(f"{len(hits)} finding(s) at {fail_on} or worse: {names}")
    if report.degraded:
        missing = ", ".join(f"{name}: {why}" for name, why in report.sources.items() if why != "ok")
        return UnhealthyError(f"health report degraded ({missing})")
    return None
