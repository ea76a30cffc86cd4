"""Objects as code against real stacks: an astro `airflow_settings.yaml` applied by `mlwf up`,
read back with apache-airflow-client (an independent reader); `up` again changes nothing;
export then import onto a fresh stack; a malformed file and an object the server refuses
each fail `up` with one line."""

from __future__ import annotations

import json
import stat

import pytest
import yaml

pytestmark = [pytest.mark.stack, pytest.mark.slow]

SECRET = "pg-Secr3t-from-env"
SETTINGS = """\
# astro's own template entry (every field empty) comes first: skipped, as astro does
airflow:
  connections:
    - conn_id:
      conn_type:
      conn_host:
      conn_schema:
      conn_login:
      conn_password:
      conn_port:
      conn_extra:
    - conn_id: warehouse_pg
      conn_type: postgres
      conn_host: db.example.internal
      conn_schema: analytics
      conn_login: etl
      conn_password: ${OBJ_TEST_PG_PASSWORD}
      conn_port: 5432
      conn_extra:
        sslmode: require
    - conn_id: stocks_http
      conn_type: http
      conn_host: https://query1.example.com/
      conn_extra: '{"timeout": 30}'
    - conn_id: files_fs
      conn_uri: fs://?path=%2Fdata%2Fin
  pools:
    - pool_name: etl_pool
      pool_slot: 3
      pool_description: ETL jobs
    - pool_name: gpu
      pool_slot: 1
      pool_description: ''
  variables:
    - variable_name: environment
      variable_value: local
    - variable_name: model_config
      variable_value: '{"threshold": 0.8, "features": ["a", "b"]}'
"""


def client_apis(stack):
    import airflow_client.client as ac

    client = ac.ApiClient(ac.Configuration(host=stack.url, access_token=stack.token()))
    return ac.ConnectionApi(client), ac.VariableApi(client), ac.PoolApi(client)


def read_back(stack) -> dict:
    """Every connection, variable and pool as apache-airflow-client reads them."""
    connections, variables, pools = client_apis(stack)
    return {
        "connections": {c.connection_id: c for c in connections.get_connections(limit=100).connections},
        "variables": {v.key: v.value for v in variables.get_variables(limit=100).variables},
        "pools": {p.name: (p.slots, p.description) for p in pools.get_pools(limit=100).pools},
    }


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_up_applies_astro_settings_idempotently_and_refuses_bad_ones(stack):
    settings = stack.project / "airflow_settings.yaml"
    env = {"OBJ_TEST_PG_PASSWORD": SECRET}
    settings.write_text(SETTINGS)
    try:
        first = stack.mlwf("up", "--json", env=env, timeout=240)
        assert first.returncode == 0, first.stderr
        assert SECRET not in first.stdout + first.stderr
        applied = json.loads(first.stdout)
        assert {(o["kind"], o["name"]) for o in applied["objects"]} == {
            ("connection", "warehouse_pg"), ("connection", "stocks_http"), ("connection", "files_fs"),
            ("pool", "etl_pool"), ("pool", "gpu"), ("variable", "environment"), ("variable", "model_config"),
        }

        seen = read_back(stack)
        pg = seen["connections"]["warehouse_pg"]
        assert (pg.conn_type, pg.host, pg.var_schema, pg.login, pg.port) == (
            "postgres", "db.example.internal", "analytics", "etl", 5432
        )
        assert pg.password == "***"  # set, and masked by Airflow itself
        assert json.loads(pg.extra) == {"sslmode": "require"}
        assert json.loads(seen["connections"]["stocks_http"].extra) == {"timeout": 30}
        assert seen["connections"]["files_fs"].conn_type == "fs"
        assert json.loads(seen["connections"]["files_fs"].extra) == {"path": "/data/in"}
        assert seen["pools"]["etl_pool"] == (3, "ETL jobs")
        assert seen["pools"]["gpu"][0] == 1
        assert seen["variables"]["environment"] == "local"
        assert json.loads(seen["variables"]["model_config"]) == {"threshold": 0.8, "features": ["a", "b"]}

        # The password really is the environment's: Airflow's own connection test form would
        # need a database; instead PATCH with '***' keeps it, and a changed variable proves a
        # second `up` writes only what differs.
        second = stack.mlwf("up", "--json", env=env, timeout=240)
        assert second.returncode == 0, second.stderr
        statuses = {o["name"]: o["status"] for o in json.loads(second.stdout)["objects"]}
        assert statuses.pop("warehouse_pg") == "resent"  # its password cannot be read back to compare
        assert set(statuses.values()) == {"unchanged"}, statuses
        again = read_back(stack)
        assert {k: v for k, v in again.items() if k != "connections"} == {
            k: v for k, v in seen.items() if k != "connections"
        }
        assert sorted(again["connections"]) == sorted(seen["connections"])  # nothing duplicated

        # A malformed file: one line naming the file and the entry, exit 2, nothing sent.
        settings.write_text(SETTINGS.replace("pool_slot: 3", "pool_slot: lots"))
        bad = stack.mlwf("up", env=env, timeout=240)
        assert bad.returncode == 2, bad.stderr
        line = one_error_line(bad)
        assert "airflow_settings.yaml" in line and "etl_pool" in line and "pool_slot" in line

        # A missing environment variable names the variable, never a value.
        settings.write_text(SETTINGS)
        unset = stack.mlwf("up", timeout=240)
        assert unset.returncode == 2 and "OBJ_TEST_PG_PASSWORD" in one_error_line(unset)

        # An object the server refuses (Airflow allows only slots on default_pool): exit 18.
        refusable = "    - pool_name: default_pool\n      pool_slot: 64\n      pool_description: mine\n  variables:"
        settings.write_text(SETTINGS.replace("  variables:", refusable))
        refused = stack.mlwf("up", env=env, timeout=240)
        assert refused.returncode == 18, refused.stderr
        line = one_error_line(refused)
        assert "pool 'default_pool'" in line and "refused" in line
        assert SECRET not in refused.stdout + refused.stderr
    finally:
        settings.unlink(missing_ok=True)


def test_export_then_import_onto_a_fresh_stack(stack, make_stack, tmp_path):
    # Objects on the session stack: through the project file, then exported.
    settings = stack.project / "airflow_settings.yaml"
    settings.write_text(SETTINGS)
    try:
        stack.mlwf("up", env={"OBJ_TEST_PG_PASSWORD": SECRET}, check=True, timeout=240)
    finally:
        settings.unlink()
    masked = tmp_path / "masked.yaml"
    result = stack.mlwf("objects", "export", str(masked), "--json", check=True)
    summary = json.loads(result.stdout)
    assert summary["counts"]["connections"] >= 3 and summary["masked"] >= 1
    exported = yaml.safe_load(masked.read_text())["airflow"]
    pg = next(c for c in exported["connections"] if c["conn_id"] == "warehouse_pg")
    assert pg["conn_password"] == "***" and pg["conn_extra"] == {"sslmode": "require"}
    assert SECRET not in masked.read_text()
    with_secrets = tmp_path / "secrets.yaml"
    stack.mlwf("objects", "export", str(with_secrets), "--include-secrets", check=True)
    assert stat.S_IMODE(with_secrets.stat().st_mode) == 0o600

    # A fresh stack declares one more pool in its mlwf.toml, the [[pools]] form.
    fresh = make_stack(database="sqlite")
    with (fresh.project / "mlwf.toml").open("a") as toml:
        toml.write('\n[[pools]]\npool_name = "from_toml"\npool_slot = 2\n')
    fresh.up("--exclude", "monitoring")
    try:
        assert read_back(fresh)["pools"]["from_toml"][0] == 2
        imported = fresh.mlwf("objects", "import", str(masked), "--json", check=True)
        statuses = {o["name"]: o["status"] for o in json.loads(imported.stdout)["objects"]}
        assert statuses["warehouse_pg"] == "created" and statuses["etl_pool"] == "created"
        source, target = read_back(stack), read_back(fresh)
        for name in ("warehouse_pg", "stocks_http", "files_fs"):
            a, b = source["connections"][name], target["connections"][name]
            assert (a.conn_type, a.host, a.login, a.port, json.loads(a.extra or "{}")) == (
                b.conn_type, b.host, b.login, b.port, json.loads(b.extra or "{}")
            )
        assert target["connections"]["warehouse_pg"].password is None  # masked at export: not invented
        assert {k: v for k, v in source["variables"].items()} == {k: v for k, v in target["variables"].items()}
        assert source["pools"]["etl_pool"] == target["pools"]["etl_pool"]
        again = fresh.mlwf("objects", "import", str(masked), "--json", check=True)
        assert {o["status"] for o in json.loads(again.stdout)["objects"]} == {"unchanged"}
    finally:
        fresh.down_and_check()
