"""The DAGs table of `mlwf status`: paused, last run and its state, next run (REST API v2)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from mlflowctl.errors import ApiError, UnreachableError


@dataclass
class DagSummary:
    dag_id: str
    paused: bool
    schedule: str | None
    last_run_id: str | None
    last_run_state: str | None
    last_run_start: str | None
    next_run: str | None
    import_errors: int = 0


def api_client(url: str, user: str, password: str, home: Path | None, timeout: float = 5.0, warn=None):
    """An httpx client logged in with a cached token (see mlflowctl.api.auth)."""
    import httpx

    from mlflowctl.api.auth import TOKEN_FILE, TokenAuth, TokenCache

    cache = TokenCache(home / TOKEN_FILE if home else None)
    plain = url.startswith("http://")  # no TLS: skip building an SSL context (~50 ms CPU)
    return httpx.Client(
        base_url=url, auth=TokenAuth(url, user, lambda: password, cache, warn=warn), timeout=timeout, verify=not plain
    )


def dag_overview(url: str, user: str, password: str, *, home: Path | None = None, warn=None) -> list[DagSummary]:
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    try:
        with api_client(url, user, password, home, warn=warn) as client:
            response = client.get("/api/v2/dags", params={"limit": 100, "order_by": "dag_id"})
            _raise_for(response)
            dags = response.json().get("dags", [])

            def last_run(dag_id: str) -> dict:
                runs = client.get(
                    f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns", params={"order_by": "-run_after", "limit": 1}
                )
                _raise_for(runs)
                return (runs.json().get("dag_runs") or [None])[0] or {}

            with ThreadPoolExecutor(max_workers=8) as pool:
                lasts = list(pool.map(last_run, [str(dag["dag_id"]) for dag in dags]))
        return [
            DagSummary(
                dag_id=str(dag["dag_id"]),
                paused=bool(dag.get("is_paused")),
                schedule=_text(dag.get("timetable_summary")),
                last_run_id=_text(last.get("dag_run_id")),
                last_run_state=_text(last.get("state")),
                last_run_start=_text(last.get("start_date")),
                next_run=None if dag.get("is_paused") else _text(dag.get("next_dagrun_run_after")),
            )
            for dag, last in zip(dags, lasts)
        ]
    except httpx.TransportError as exc:
        raise UnreachableError(f"Airflow at {url} is not answering: {exc}") from None
    except (LookupError, TypeError, ValueError, AttributeError) as exc:  # not JSON, or not the API's shape
        raise ApiError(f"Airflow at {url} answered the DAG list with something mlwf cannot read ({exc})") from None


def _text(value) -> str | None:
    return None if value is None else str(value)


def _raise_for(response) -> None:
    if response.status_code >= 300:  # a redirect is not an API answer either
        raise ApiError(f"{response.request.url.path}: HTTP {response.status_code}: {response.text[:200]}")
