"""The `serving` group of the local stack: the model server (`mlpipeline.serving`) as a service.

It runs in the Airflow runtime's python (scikit-learn, skops, Starlette and uvicorn are
there), with the stack's environment, so it reads the very registry the tasks write
(`MLWF_DATA_ROOT`, `MLWF_REGISTRY_DIR`). The tasks get its URL as `MLWF_SERVING_URL`, which
`deploy_model` uses to check that what it promoted is what is served.
"""

from __future__ import annotations

from mlflowctl.backends.local.state import ServiceSpec, Stack
from mlflowctl.backends.ports import PortNeed
from mlflowctl.config import local_url

SERVING = "serving"
#: How long `status` waits for the server's /health (it answers from memory: quick unless the machine is swamped).
HEALTH_TIMEOUT_S = 2.0


def services(stack: Stack) -> list[ServiceSpec]:
    port = stack.config.serving_port
    return [
        ServiceSpec(
            SERVING,
            [stack.python, "-m", "mlpipeline.serving", "--host", "127.0.0.1", "--port", str(port)],
            kind=SERVING,
            group=SERVING,
            port=port,
            url=local_url(port),
            ports=[PortNeed("serving", "serving_port", port)],
        )
    ]


def task_environment(specs: list[ServiceSpec]) -> dict[str, str]:
    """MLWF_SERVING_URL for the tasks when the stack serves models (not with `--exclude serving`)."""
    return {"MLWF_SERVING_URL": spec.url} if (spec := next((s for s in specs if s.name == SERVING), None)) else {}


def probe(client, base_url: str) -> tuple[bool, str]:
    """(healthy, detail): the version served, or why the production version was refused."""
    import httpx

    try:
        answer = client.get(f"{base_url}/health", timeout=HEALTH_TIMEOUT_S)
        facts = answer.json()
    except (httpx.HTTPError, ValueError):
        return False, f"not answering {base_url}/health"
    served, production = facts.get("served"), facts.get("production")
    if answer.status_code != 200:
        return False, f"serving {served or 'nothing'}; {facts.get('reason') or 'unhealthy'}"
    if served is None:
        return True, "no production model yet" if production is None else f"loading {production}"
    if production not in (None, served):
        return True, f"serving {served}, loading {production}"
    return True, f"serving {served}"
