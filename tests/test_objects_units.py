"""Reading declared objects: astro's file as is, the mlwf.toml form, and one-line refusals that
never show a value. No server: what a server does with them is in test_objects_e2e.py."""

from __future__ import annotations

import json

import pytest

from mlflowctl.config import load_config
from mlflowctl.errors import UsageError
from mlflowctl.objects import declared, parse, read_astro_file


def test_astro_file_with_template_entry_env_reference_and_uri(tmp_path):
    path = tmp_path / "airflow_settings.yaml"
    path.write_text(
        "airflow:\n"
        "  connections:\n"
        "    - {conn_id: , conn_type: , conn_host: }\n"
        "    - {conn_id: db, conn_uri: 'postgres://u:p%40ss@h:5433/s?sslmode=require'}\n"
        "    - {conn_id: api, conn_type: http, conn_password: '${API_PW}', conn_port: '8443'}\n"
        "  pools: [{pool_name: p, pool_slot: -1}]\n"
        "  variables:\n"
        "    - {variable_name: cfg, variable_value: {a: 1}}\n"
        "    - {variable_name: lit, variable_value: 'cost $${HOME}'}\n"
    )
    items = {item.name: item.body for item in read_astro_file(path, {"API_PW": "pw"})}
    assert items["db"] == {"connection_id": "db", "conn_type": "postgres", "host": "h", "login": "u", "password": "p@ss",
                           "schema": "s", "port": 5433, "extra": json.dumps({"sslmode": "require"})}
    assert items["api"]["password"] == "pw" and items["api"]["port"] == 8443
    assert items["p"] == {"name": "p", "slots": -1, "description": ""}
    assert json.loads(items["cfg"]["value"]) == {"a": 1}
    assert items["lit"]["value"] == "cost ${HOME}"


@pytest.mark.parametrize(
    "entry, words",
    [
        ("connections: [{conn_id: x, conn_type: http, conn_password: hunter2, conn_port: 70000}]", ["'x'", "conn_port"]),
        ("connections: [{conn_id: x, conn_password: hunter2}]", ["'x'", "conn_type"]),
        ("connections: [{conn_id: 'a b', conn_type: http, conn_password: hunter2}]", ["conn_id"]),
        ("pools: [{pool_name: q, pool_slot: -2}]", ["'q'", "pool_slot"]),
        ("variables: [{variable_name: v}]", ["'v'", "variable_value"]),
        ("variables: [{variable_name: v, variable_value: '${NOPE_UNSET}'}]", ["NOPE_UNSET"]),
        ("pools: [{pool_name: q, pool_slot: 1}, {pool_name: q, pool_slot: 2}]", ["pool 'q'", "twice"]),
        ("poolz: []", ["poolz"]),
    ],
)
def test_refusals_are_one_line_naming_the_entry_and_never_a_value(tmp_path, entry, words):
    path = tmp_path / "airflow_settings.yaml"
    path.write_text(f"airflow:\n  {entry}\n")
    with pytest.raises(UsageError) as caught:
        read_astro_file(path, {})
    message = str(caught.value)
    assert "\n" not in message and "hunter2" not in message and str(path) in message
    for word in words:
        assert word in message


def test_mlwf_toml_declares_the_same_and_clashes_with_the_yaml(tmp_path):
    (tmp_path / "mlwf.toml").write_text('airflow_port = 8081\n[[pools]]\npool_name = "p"\npool_slot = 2\n')
    config = load_config(cwd=tmp_path, environ={})
    assert config.airflow_port == 8081
    assert [(i.kind, i.name, i.source) for i in declared(config, {})] == [("pool", "p", "mlwf.toml")]
    (tmp_path / "airflow_settings.yaml").write_text("airflow:\n  pools: [{pool_name: p, pool_slot: 3}]\n")
    with pytest.raises(UsageError, match="declared twice"):
        declared(config, {})


def test_parse_of_nothing_is_nothing():
    assert parse({}, "x") == []
