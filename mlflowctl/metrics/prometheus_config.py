"""Render the local backend's Prometheus config from `stack/prometheus/prometheus.yml`.

The file in the repository is a complete config for the default ports; rendering keeps
its globals, jobs and rules and changes only where things are:

    from mlflowctl.metrics.prometheus_config import write_local_config
    write_local_config(state_dir / "prometheus" / "prometheus.yml",
                       exporter_port=9102, prometheus_port=9090)

- the `statsd-exporter` job scrapes `exporter_host:exporter_port`,
- the `prometheus` job scrapes Prometheus itself on `prometheus_host:prometheus_port`,
- the `serving` job scrapes the model server on `127.0.0.1:serving_port` (when given),
- `rule_files` become absolute paths into `stack/prometheus/rules/` (the repository's
  rules stay the single copy; the state directory holds no stale one),
- `scrape_interval` / `evaluation_interval` may be overridden (tests use 1s).

Then start `prometheus --config.file=<that file> --storage.tsdb.path=<state>/prometheus/data
--web.listen-address=<prometheus_host>:<prometheus_port>`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlflowctl.errors import UsageError
from mlpipeline.files import atomic_write_bytes

STACK_DIR = Path(__file__).resolve().parents[2] / "stack"
EXPORTER_JOB = "statsd-exporter"
PROMETHEUS_JOB = "prometheus"
SERVING_JOB = "serving"


def _template(stack_dir: Path) -> tuple[dict[str, Any], Path]:
    import yaml

    path = stack_dir / "prometheus" / "prometheus.yml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the Prometheus template {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("scrape_configs"), list):
        raise UsageError(f"{path} is not a Prometheus config with scrape_configs")
    return data, path


def render_local_config(
    *,
    exporter_port: int,
    prometheus_port: int,
    exporter_host: str = "127.0.0.1",
    prometheus_host: str = "127.0.0.1",
    serving_port: int | None = None,
    scrape_interval: str | None = None,
    evaluation_interval: str | None = None,
    stack_dir: Path | str | None = None,
) -> str:
    """The local Prometheus config as YAML text (see the module docstring)."""
    import yaml

    data, template_path = _template(Path(stack_dir) if stack_dir else STACK_DIR)
    glob = data.setdefault("global", {})
    if scrape_interval:
        glob["scrape_interval"] = scrape_interval
    if evaluation_interval:
        glob["evaluation_interval"] = evaluation_interval
    base = template_path.parent
    data["rule_files"] = [str((base / f).resolve()) if not os.path.isabs(f) else f for f in data.get("rule_files") or []]
    targets = {
        EXPORTER_JOB: f"{exporter_host}:{int(exporter_port)}",
        PROMETHEUS_JOB: f"{prometheus_host}:{int(prometheus_port)}",
    }
    if serving_port is not None:
        targets[SERVING_JOB] = f"127.0.0.1:{int(serving_port)}"
    seen = set()
    for job in data["scrape_configs"]:
        name = job.get("job_name")
        if name in targets:
            job["static_configs"] = [{"targets": [targets[name]]}]
            seen.add(name)
    missing = set(targets) - seen
    if missing:
        raise UsageError(f"{template_path} has no job named {', '.join(sorted(missing))}")
    header = f"# Rendered by mlwf from {template_path}; edit that file, not this one.\n"
    return header + yaml.safe_dump(data, sort_keys=False)


def write_local_config(path: Path | str, **kwargs: Any) -> Path:
    """Render (as render_local_config) and write atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, render_local_config(**kwargs).encode())
    return path
