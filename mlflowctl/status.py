"""What `mlwf status` shows: the backend's services and, beside them, the DAGs from the API.

The DAGs are fetched while the backend probes its services (neither waits for the other),
and are shown only when the api-server is healthy. A DAG list that cannot be had is a line
in the report, not a failure: the services are the command's answer (a damaged state file
still is one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from mlflowctl.errors import AuthError, DamagedStateError, MlwfError

if TYPE_CHECKING:
    from mlflowctl.backends.base import Backend, StackStatus
    from mlflowctl.runs import DagsOverview


@dataclass
class Overview:
    stack: StackStatus
    dags: DagsOverview | None
    dags_error: str | None = None


def overview(backend: Backend, fetch_dags: Callable[[], DagsOverview]) -> Overview:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        dags = pool.submit(_dags, fetch_dags)
        stack = backend.status()
        listed, error = dags.result()
    if not any(s.name == "api-server" and s.state == "healthy" for s in stack.services):
        listed, error = None, None
    return Overview(stack, listed, error)


def _dags(fetch: Callable[[], DagsOverview]) -> tuple[DagsOverview | None, str | None]:
    try:
        return fetch(), None
    except DamagedStateError:  # a damaged secrets.json is the user's to repair: `status` says so, as all do
        raise
    except AuthError as exc:  # its hint says how to give the credentials: keep it
        return None, f"{exc} ({exc.hint})" if exc.hint else str(exc)
    except MlwfError as exc:
        return None, str(exc)
