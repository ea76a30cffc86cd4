"""A tiny reader of Airflow's REST API v2 for monitoring_dag (task code may not touch the DB).

Credentials come from the Airflow connection ``mlwf_api`` (the DAG passes its fields in;
the local backend defines it as ``AIRFLOW_CONN_MLWF_API``), or from the environment:
``MLWF_AIRFLOW_URL``, ``MLWF_AIRFLOW_USER``, ``MLWF_AIRFLOW_PASSWORD``.
Tokens: ``POST /auth/token {"username","password"}`` -> ``{"access_token"}``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

CONN_ENV = "AIRFLOW_CONN_MLWF_API"


class AirflowApiError(RuntimeError):
    """The API refused us, was unreachable, or answered with something unexpected."""


@dataclass(frozen=True)
class ApiCredentials:
    base_url: str
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # never print the password into a task log
        return f"ApiCredentials(base_url={self.base_url!r}, username={self.username!r}, password=***)"


def credentials_from_connection(
    *, conn_type: str | None, host: str | None, port: int | None, login: str | None,
    password: str | None, schema: str | None = None,
) -> ApiCredentials:
    """From an Airflow Connection's fields (``http``/``https`` type, host with or without scheme)."""
    if not host:
        raise AirflowApiError("connection mlwf_api has no host")
    if "://" in host:
        base = host.rstrip("/")
    else:
        scheme = "https" if (conn_type or "").lower() == "https" or (schema or "").lower() == "https" else "http"
        base = f"{scheme}://{host}" + (f":{port}" if port else "")
    return ApiCredentials(base, login or None, password or None)


def _from_conn_env(raw: str) -> ApiCredentials:
    raw = raw.strip()
    if raw.startswith("{"):
        data = json.loads(raw)
        return credentials_from_connection(
            conn_type=data.get("conn_type"), host=data.get("host"), port=data.get("port"),
            login=data.get("login"), password=data.get("password"), schema=data.get("schema"),
        )
    parts = urlsplit(raw)
    return credentials_from_connection(
        conn_type=parts.scheme, host=parts.hostname, port=parts.port,
        login=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def credentials_from_env(environ: Mapping[str, str] | None = None) -> ApiCredentials:
    """``AIRFLOW_CONN_MLWF_API`` (URI or JSON), else ``MLWF_AIRFLOW_URL/USER/PASSWORD``."""
    env = os.environ if environ is None else environ
    if env.get(CONN_ENV):
        try:
            return _from_conn_env(env[CONN_ENV])
        except (ValueError, AirflowApiError) as exc:
            raise AirflowApiError(f"{CONN_ENV} is not a usable connection: {exc}") from None
    url = env.get("MLWF_AIRFLOW_URL", "").strip()
    if not url:
        raise AirflowApiError(
            f"no Airflow API configured: define the connection mlwf_api ({CONN_ENV}) or MLWF_AIRFLOW_URL"
        )
    return ApiCredentials(url.rstrip("/"), env.get("MLWF_AIRFLOW_USER") or None, env.get("MLWF_AIRFLOW_PASSWORD") or None)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).isoformat()


class AirflowApi:
    """Read-only calls monitoring needs. Use as a context manager."""

    def __init__(self, creds: ApiCredentials, *, timeout: float = 10.0, transport: Any = None) -> None:
        import httpx

        self.creds = creds
        self._client = httpx.Client(base_url=creds.base_url, timeout=timeout, transport=transport)
        self._token: str | None = None

    def __enter__(self) -> AirflowApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _login(self) -> None:
        import httpx

        if not self.creds.username:
            return
        try:
            r = self._client.post(
                "/auth/token", json={"username": self.creds.username, "password": self.creds.password or ""}
            )
        except httpx.HTTPError as exc:
            raise AirflowApiError(f"Airflow API at {self.creds.base_url} unreachable: {exc}") from None
        if r.status_code in (401, 403):
            raise AirflowApiError(f"Airflow API refused the credentials of {self.creds.username!r}")
        if r.status_code >= 400:
            raise AirflowApiError(f"POST /auth/token -> HTTP {r.status_code}")
        self._token = r.json()["access_token"]

    def get(self, path: str, **params: Any) -> Any:
        import httpx

        if self._token is None and self.creds.username:
            self._login()
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        query = {k: v for k, v in params.items() if v is not None}
        try:
            r = self._client.get(path, params=query, headers=headers)
        except httpx.HTTPError as exc:
            raise AirflowApiError(f"Airflow API at {self.creds.base_url} unreachable: {exc}") from None
        if r.status_code >= 400:
            raise AirflowApiError(f"GET {path} -> HTTP {r.status_code}: {r.text[:200]}")
        return r.json()

    def _all(self, path: str, key: str, *, page: int = 100, cap: int = 1000, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while len(items) < cap:
            data = self.get(path, limit=page, offset=len(items), **params)
            batch = data.get(key, [])
            items.extend(batch)
            if len(batch) < page or len(items) >= data.get("total_entries", 0):
                break
        return items

    # -- what monitoring reads

    def health(self) -> dict[str, Any]:
        return self.get("/api/v2/monitor/health")

    def dag_runs(self, *, since: dt.datetime | None = None, state: str | None = None) -> list[dict[str, Any]]:
        """DAG runs of every DAG (started since ``since``; optionally one state)."""
        return self._all(
            "/api/v2/dags/~/dagRuns", "dag_runs",
            start_date_gte=_iso(since) if since else None, state=state, order_by="-start_date",
        )

    def failed_task_instances(self, *, since: dt.datetime, limit: int = 20) -> tuple[int, list[dict[str, Any]]]:
        """(how many task instances failed since ``since``, the ``limit`` most recent of them)."""
        data = self.get(
            "/api/v2/dags/~/dagRuns/~/taskInstances", state="failed", limit=limit,
            start_date_gte=_iso(since), order_by="-start_date",
        )
        return int(data.get("total_entries", 0)), data.get("task_instances", [])

    def import_error_count(self) -> int:
        return int(self.get("/api/v2/importErrors", limit=1).get("total_entries", 0))
