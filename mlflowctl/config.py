"""The one effective configuration: flag > environment (MLWF_*) > project file > default.

The project root is found as git finds its repository: the nearest directory upwards
holding `mlwf.toml` or a `pyproject.toml` with a `[tool.mlwf]` table. Every value keeps
where it came from, so `mlwf config` can say why it is what it is.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from mlflowctl.errors import UsageError

BACKENDS = ("auto", "local", "docker")
EXECUTORS = ("local", "celery")
SERVICE_GROUPS = ("monitoring",)


def _port(value: Any) -> int:
    number = int(value)
    if not 1 <= number <= 65535:
        raise ValueError("not a port number (1-65535)")
    return number


def _positive(value: Any) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _choice(options: tuple[str, ...]):
    def parse(value: Any) -> str:
        text = str(value).lower()
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text

    return parse


def _text(value: Any) -> str:
    return str(value)


def _folder(value: Any) -> str:
    """A path that must not be empty: an unset CI variable (MLWF_HOME=) is a mistake, never "here"."""
    text = str(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


#: More Celery workers than this on one machine is a typo (each idles at ~160-260 MiB).
MAX_WORKERS = 32


def _workers(value: Any) -> int:
    number = _positive(value)
    if number > MAX_WORKERS:
        raise ValueError(f"at most {MAX_WORKERS} workers on one machine")
    return number


def _seconds(value: Any) -> float:
    number = float(value)
    if not 0 <= number <= 86400:
        raise ValueError("must be between 0 and 86400 seconds")
    return number


def _module_names(value: Any) -> tuple[str, ...]:
    """A list (project file) or a comma-separated string (MLWF_TASK_PRELOAD) of module names."""
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [str(name).strip() for name in names if str(name).strip()]
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"{name!r} is not a module name")
    return tuple(names)


def _setting(default: Any, parse=_text, *, secret: bool = False, help: str = ""):
    return field(default=default, metadata={"parse": parse, "secret": secret, "help": help})


@dataclass
class Config:
    """Effective settings. Paths are absolute once loaded; `sources` maps name -> origin."""

    backend: str = _setting("auto", _choice(BACKENDS), help="auto, local or docker")
    home: str = _setting(".mlwf", _folder, help="state directory (pid files, logs, secrets, data)")
    airflow_port: int = _setting(8080, _port, help="Airflow api-server and UI")
    prometheus_port: int = _setting(9090, _port)
    exporter_port: int = _setting(9102, _port, help="StatsD exporter's /metrics")
    statsd_port: int = _setting(8125, _port, help="UDP port Airflow sends StatsD to")
    grafana_port: int = _setting(3000, _port)
    log_server_port: int = _setting(8793, _port, help="Airflow worker log server")
    trigger_log_server_port: int = _setting(8794, _port, help="Airflow triggerer log server")
    redis_port: int = _setting(6390, _port, help="mlwf's own Redis broker (celery)")
    postgres_port: int = _setting(5442, _port, help="mlwf's own PostgreSQL (celery)")
    parallelism: int = _setting(4, _positive)
    executor: str = _setting("local", _choice(EXECUTORS))
    workers: int = _setting(2, _workers, help="Celery workers")
    task_preload: tuple[str, ...] = _setting(
        (), _module_names, help="libraries imported once, before tasks start, instead of by every task"
    )
    dags_dir: str = _setting("dags", _folder)
    tasks_dir: str = _setting("src", _folder, help="folder put on the components' path")
    lock_wait: float = _setting(
        180.0, _seconds, help="seconds `up`, `down` or `scale` wait for another one holding the state directory"
    )
    broker_url: str = _setting("", secret=True, help="use this broker instead of mlwf's Redis")
    database_url: str = _setting("", secret=True, help="use this database instead of mlwf's")
    airflow_url: str = _setting("", help="Airflow API server; default the local stack's")
    airflow_user: str = _setting("admin")
    webhook_url: str = _setting("", secret=True, help="notifications webhook")

    project_root: Path = field(default=Path("."), metadata={"internal": True})
    sources: dict[str, str] = field(default_factory=dict, metadata={"internal": True})

    @property
    def home_dir(self) -> Path:
        return Path(self.home)

    @property
    def api_url(self) -> str:
        """The Airflow server commands talk to: an explicit URL, else the local stack's."""
        return (self.airflow_url or f"http://127.0.0.1:{self.airflow_port}").rstrip("/")

    def items(self) -> list[tuple[str, Any, str, bool]]:
        """(name, value, source, secret) for every user-facing setting, in declaration order."""
        return [
            (f.name, getattr(self, f.name), self.sources.get(f.name, "default"), f.metadata["secret"])
            for f in _settings()
        ]


def _settings():
    return [f for f in fields(Config) if not f.metadata.get("internal")]


def find_project_root(start: Path | None = None) -> Path | None:
    """The nearest directory upwards with mlwf.toml or pyproject.toml holding [tool.mlwf]."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / "mlwf.toml").is_file():
            return directory
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file() and "mlwf" in _read_toml(pyproject).get("tool", {}):
            return directory
    return None


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


def _project_values(root: Path) -> tuple[dict, str]:
    if (root / "mlwf.toml").is_file():
        return _read_toml(root / "mlwf.toml"), "mlwf.toml"
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        return _read_toml(pyproject).get("tool", {}).get("mlwf", {}), "pyproject.toml [tool.mlwf]"
    return {}, ""


def load_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge defaults, the project file, MLWF_* variables and flags (None means unset)."""
    environ = os.environ if environ is None else environ
    root = find_project_root(cwd)
    file_values, file_label = _project_values(root) if root else ({}, "")
    known = {f.name for f in _settings()}
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise UsageError(f"{file_label}: unknown setting(s): {', '.join(unknown)}")

    config = Config()
    layers = (
        (file_values, file_label),
        ({name: environ[f"MLWF_{name.upper()}"] for name in known if f"MLWF_{name.upper()}" in environ}, "env"),
        ({k: v for k, v in (overrides or {}).items() if v is not None}, "flag"),
    )
    for values, label in layers:
        for name, raw in values.items():
            spec = next(f for f in _settings() if f.name == name)
            origin = f"MLWF_{name.upper()}" if label == "env" else label
            try:
                setattr(config, name, spec.metadata["parse"](raw))
            except (TypeError, ValueError) as exc:
                raise UsageError(f"{name}={raw!r} (from {origin}): {exc}") from None
            config.sources[name] = origin

    here = (cwd or Path.cwd()).resolve()
    config.project_root = root or here
    for name in ("home", "dags_dir", "tasks_dir"):
        # Paths from the project file are relative to the project; typed ones to where you are.
        base = here if config.sources.get(name, "").startswith(("MLWF_", "flag")) else config.project_root
        setattr(config, name, str((base / getattr(config, name)).resolve()))
    return config
