"""Connections, variables and pools declared in the project, applied through the REST API.

Astronomer's `airflow_settings.yaml` is read as astro writes it (top key `airflow`, then
`connections`, `variables`, `pools` with astro's field names), and the same three lists may
sit in `mlwf.toml` or `[tool.mlwf]` (`[[connections]]` / `[[tool.mlwf.connections]]`, ...):
one parser, one model. Any string value may name an environment variable, `${NAME}` (`$${`
for a literal `${`), so secrets stay out of the project. Values are never put in messages.

Applying is idempotent: an object is created when the server has none of that name,
patched in only the fields that differ, and left alone when equal. Airflow never sends
secrets back (it shows them as '***'), so a secret cannot be compared: it is sent again
("resent"). '***' in a file (an export without secrets) means "keep the server's value".
Nothing here prints; the CLI renders the `Applied` records.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from mlflowctl.errors import MlwfError, ObjectRejectedError, UsageError

if TYPE_CHECKING:
    from mlflowctl.api.airflow import AirflowClient
    from mlflowctl.config import Config

ASTRO_FILE = "airflow_settings.yaml"
KINDS = ("connections", "variables", "pools")
MASK = "***"
# Airflow's own list (secrets_masker.DEFAULT_SENSITIVE_FIELDS, 3.3): keys holding any of these
# are secret, in a connection's extra, a variable's name or a JSON variable's keys.
SENSITIVE = (
    "access_key", "access_token", "api_key", "apikey", "auth_header", "authorization", "bearer",
    "connection_string", "dsn", "passphrase", "passwd", "password", "private_key", "proxy", "proxies",
    "secret", "service_account", "service_key", "token", "keyfile_dict", "webhook_url",
)
_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# ---------------------------------------------------------------- the model (astro's names)


def _models():
    """The pydantic models, built on first use: pydantic costs ~100 ms to import, paid only
    by a project that declares objects."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

    class Entry(BaseModel):
        model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    class ConnectionSpec(Entry):
        conn_id: str = Field(min_length=1, max_length=200, pattern=r"^[\w.-]+$")
        conn_type: str | None = None
        conn_host: str | None = None
        conn_schema: str | None = None
        conn_login: str | None = None
        conn_password: str | None = None
        conn_port: int | None = Field(default=None, ge=1, le=65535)
        conn_uri: str | None = None
        conn_extra: dict[str, Any] | str | None = None

        @field_validator("conn_extra")
        @classmethod
        def extra_is_object(cls, value):
            if isinstance(value, str):
                if not value.strip():
                    return None
                try:
                    value = json.loads(value)
                except ValueError:
                    raise ValueError("must be a mapping or a JSON object") from None
                if not isinstance(value, dict):
                    raise ValueError("must be a mapping or a JSON object")
            return value

        @model_validator(mode="after")
        def one_form(self):
            fields = ("conn_type", "conn_host", "conn_schema", "conn_login", "conn_password", "conn_port")
            if self.conn_uri and any(getattr(self, name) is not None for name in fields):
                raise ValueError("give conn_uri or the conn_* fields, not both")
            if not self.conn_uri and not self.conn_type:
                raise ValueError("conn_type (or conn_uri) is required")
            return self

    class VariableSpec(Entry):
        variable_name: str = Field(min_length=1, max_length=250)
        variable_value: Any

        @field_validator("variable_value")
        @classmethod
        def as_text(cls, value):
            """Airflow stores text: a mapping or list is stored as its JSON (astro takes strings only)."""
            if value is None:
                raise ValueError("is required")
            return value if isinstance(value, str) else json.dumps(value)

    class PoolSpec(Entry):
        pool_name: str = Field(min_length=1, max_length=256)
        pool_slot: int = Field(ge=-1)
        pool_description: str | None = None

    return {"connections": (ConnectionSpec, "conn_id"), "variables": (VariableSpec, "variable_name"),
            "pools": (PoolSpec, "pool_name")}


@dataclass(frozen=True)
class Declared:
    """One object from a file: its kind, name, the API body it stands for, and where it came from."""

    kind: str  # connection | variable | pool
    name: str
    body: dict = field(repr=False)  # may hold secrets: never in a repr
    source: str

    @property
    def label(self) -> str:
        return f"{self.kind} '{self.name}'"


def _expand(value: Any, where: str, environ: Mapping[str, str]) -> Any:
    """`${NAME}` replaced by the environment's value in every string of `value`."""
    if isinstance(value, str):
        def one(match: re.Match) -> str:
            if match.group(1) is None:
                return "${"
            if match.group(1) not in environ:
                raise UsageError(f"{where}: environment variable {match.group(1)} is not set")
            return environ[match.group(1)]

        return _REFERENCE.sub(one, value)
    if isinstance(value, dict):
        return {key: _expand(item, where, environ) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, where, environ) for item in value]
    return value


def _uri_fields(uri: str) -> dict:
    """A connection URI as Airflow reads one (`type://login:password@host:port/schema?extra`)."""
    parts = urlsplit(uri)
    if not parts.scheme:
        raise ValueError("conn_uri has no scheme (the connection type)")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    extra = json.loads(query["__extra__"]) if "__extra__" in query else query
    return {
        "conn_type": parts.scheme.replace("-", "_"),
        "host": unquote(parts.hostname or "") or None,
        "login": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "schema": unquote(parts.path.lstrip("/")) or None,
        "port": parts.port,
        "extra": extra or None,
    }


def _body(kind: str, spec) -> dict:
    if kind == "connections":
        if spec.conn_uri:
            fields = _uri_fields(spec.conn_uri)
        else:
            fields = {"conn_type": spec.conn_type, "host": spec.conn_host, "login": spec.conn_login,
                      "password": spec.conn_password, "schema": spec.conn_schema, "port": spec.conn_port,
                      "extra": None}
        if spec.conn_extra is not None:
            fields["extra"] = spec.conn_extra
        extra = fields.pop("extra")
        return {"connection_id": spec.conn_id, **fields, "extra": None if extra is None else json.dumps(extra)}
    if kind == "variables":
        return {"key": spec.variable_name, "value": spec.variable_value}
    return {"name": spec.pool_name, "slots": spec.pool_slot, "description": spec.pool_description or ""}


def _blank(entry: Any) -> bool:
    """astro's template entry: every field empty. astro skips it; so does mlwf."""
    return isinstance(entry, dict) and all(value in (None, "") for value in entry.values())


def parse(tables: Mapping[str, Any], source: str, environ: Mapping[str, str] | None = None) -> list[Declared]:
    """The objects of one source: `tables` holds `connections`, `variables`, `pools` (lists of
    astro entries). Any flaw is one UsageError naming the file, the entry and the field."""
    from pydantic import ValidationError

    environ = os.environ if environ is None else environ
    unknown = sorted(set(tables) - set(KINDS))
    if unknown:
        raise UsageError(f"{source}: unknown key(s) {', '.join(unknown)} (expected {', '.join(KINDS)})")
    models = _models()
    found: list[Declared] = []
    for kind in KINDS:
        entries = tables.get(kind) or []
        if not isinstance(entries, list):
            raise UsageError(f"{source}: {kind} must be a list of entries")
        model, key = models[kind]
        for number, entry in enumerate(entries, 1):
            if _blank(entry):
                continue
            name = entry.get(key) if isinstance(entry, dict) else None
            where = f"{source}: {kind} entry {number}" + (f" ('{name}')" if isinstance(name, str) else "")
            if not isinstance(entry, dict):
                raise UsageError(f"{where}: must be a mapping of {key} and the other fields")
            try:
                spec = model.model_validate(_expand(entry, where, environ))
                body = _body(kind, spec)
            except ValidationError as exc:
                first = exc.errors(include_input=False, include_url=False)[0]
                field = ".".join(str(part) for part in first["loc"])
                raise UsageError(f"{where}: {field + ': ' if field else ''}{first['msg']}") from None
            except ValueError as exc:  # a conn_uri that does not parse
                raise UsageError(f"{where}: {exc}") from None
            found.append(Declared(kind.rstrip("s"), getattr(spec, key), body, source))
    _refuse_duplicates(found)
    return found


def read_astro_file(path: Path, environ: Mapping[str, str] | None = None) -> list[Declared]:
    """An `airflow_settings.yaml` (top key `airflow`) as astro reads it."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise UsageError(f"{path}: not valid YAML ({reason})") from None
    if data is None:
        return []
    if not isinstance(data, dict) or set(data) - {"airflow"}:
        raise UsageError(f"{path}: expected one top-level key, airflow (astro's airflow_settings.yaml)")
    tables = data.get("airflow") or {}
    if not isinstance(tables, dict):
        raise UsageError(f"{path}: airflow must be a mapping of connections, variables and pools")
    return parse(tables, str(path), environ)


def declared(config: Config, environ: Mapping[str, str] | None = None) -> list[Declared]:
    """Everything the project declares: its `airflow_settings.yaml`, then its mlwf.toml /
    [tool.mlwf] lists. One name declared twice is refused: which one should win is a guess."""
    found = list(config.objects and parse(config.objects, config.objects_origin, environ) or [])
    path = config.project_root / ASTRO_FILE
    if path.is_file():
        found = read_astro_file(path, environ) + found
    _refuse_duplicates(found)
    return found


def _refuse_duplicates(found: list[Declared]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for item in found:
        earlier = seen.get((item.kind, item.name))
        seen[item.kind, item.name] = item.source
        if earlier is not None:
            where = item.source if earlier == item.source else f"{earlier} and {item.source}"
            raise UsageError(f"{item.label} is declared twice ({where})")


# ---------------------------------------------------------------- comparing through masks


def _masked(value: Any) -> bool:
    """Whether `value` holds the mask anywhere (a value exported without its secrets)."""
    if isinstance(value, dict):
        return any(_masked(item) for item in value.values())
    if isinstance(value, list):
        return any(_masked(item) for item in value)
    return value == MASK


def _unmasked(value: Any) -> Any:
    """`value` without its masked parts (what a new object can be created with)."""
    if isinstance(value, dict):
        return {key: _unmasked(item) for key, item in value.items() if item != MASK}
    return None if value == MASK else value


def _same(server: Any, wanted: Any) -> bool | None:
    """True equal, False different, None unknown (the server masked what the file sets).
    A masked value in the file keeps the server's: equal."""
    if wanted == MASK:
        return True
    if server == MASK:
        return None
    if isinstance(server, dict) and isinstance(wanted, dict):
        if set(server) != set(wanted):
            return False
        verdicts = [_same(server[key], wanted[key]) for key in wanted]
        return False if False in verdicts else (None if None in verdicts else True)
    return server == wanted


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


# ---------------------------------------------------------------- applying


@dataclass(frozen=True)
class Applied:
    kind: str
    name: str
    status: str  # created | updated | unchanged | resent (a secret the server cannot show)
    fields: tuple[str, ...] = ()  # the fields sent (never their values)
    note: str = ""


def _existing(client: AirflowClient) -> dict[tuple[str, str], dict]:
    """Every object the server has, as comparable bodies keyed by (kind, name)."""
    found: dict[tuple[str, str], dict] = {}
    for conn in client.connections():
        found["connection", conn.connection_id] = {
            "connection_id": conn.connection_id, "conn_type": conn.conn_type, "host": conn.host,
            "login": conn.login, "password": conn.password, "schema": conn.schema, "port": conn.port,
            "extra": _json(conn.extra) or None,
        }
    for variable in client.variables():
        found["variable", variable.key] = {"key": variable.key, "value": variable.value}
    for pool in client.pools():
        found["pool", pool.name] = {"name": pool.name, "slots": pool.slots, "description": pool.description or ""}
    return found


def _compare(kind: str, server: dict, wanted: dict) -> tuple[list[str], list[str]]:
    """(fields that differ, fields whose sameness the server hides) of an existing object."""
    differ, unknown = [], []
    for name, value in wanted.items():
        if kind == "variable" and name == "value":
            verdict = _same(_json(server.get(name)), _json(value))
        elif name == "extra":
            verdict = _same(server.get(name), _json(value))
        else:
            verdict = _same(server.get(name), value)
        if verdict is False:
            differ.append(name)
        elif verdict is None:
            unknown.append(name)
    return differ, unknown


def _create_body(item: Declared) -> tuple[dict, str]:
    """The body a new object is created with, masked parts left out, and a note saying so."""
    body = dict(item.body)
    if item.kind == "variable" and _masked(_json(body["value"])):
        raise ObjectRejectedError(
            f"{item.label} ({item.source}): its value is masked ('***') and the server has none to keep",
            hint="put the value, or ${ENV_VAR}, in the file",
        )
    note = ""
    if item.kind == "connection":
        masked = [field for field in ("password", "extra") if _masked(_json(body[field]) if field == "extra" else body[field])]
        if masked:
            extra = _unmasked(_json(body["extra"]))
            body["password"] = _unmasked(body["password"])
            body["extra"] = json.dumps(extra) if extra else None
            note = f"created without its masked {' and '.join(masked)}"
    return body, note


def apply(client: AirflowClient, items: list[Declared]) -> list[Applied]:
    """Make the server hold `items`; one server refusal stops here with ObjectRejectedError."""
    if not items:
        return []
    existing = _existing(client)
    done: list[Applied] = []
    for item in items:
        methods = {
            "connection": (client.create_connection, client.update_connection),
            "variable": (client.create_variable, client.update_variable),
            "pool": (client.create_pool, client.update_pool),
        }[item.kind]
        try:
            server = existing.get((item.kind, item.name))
            if server is None:
                body, note = _create_body(item)
                methods[0](body)
                done.append(Applied(item.kind, item.name, "created", tuple(f for f in body if body[f] is not None), note))
                continue
            differ, unknown = _compare(item.kind, server, item.body)
            if item.kind == "variable" and _masked(_json(item.body["value"])):
                differ, unknown = [], []  # a masked value keeps the server's (variables do not merge)
            if not differ and not unknown:
                done.append(Applied(item.kind, item.name, "unchanged"))
                continue
            methods[1](item.body, differ + unknown)
            done.append(Applied(item.kind, item.name, "updated" if differ else "resent", tuple(differ + unknown)))
        except MlwfError as exc:
            if isinstance(exc, ObjectRejectedError) or not _refused(exc):
                raise
            raise ObjectRejectedError(f"{item.label} ({item.source}) was refused: {exc}") from None
    return done


def _refused(exc: MlwfError) -> bool:
    """A refusal of this one object (a 4xx the request caused, any other answer of the server),
    not a stack that cannot be reached or credentials that do not work (those keep their codes)."""
    from mlflowctl.errors import ApiError, NotFoundError

    return isinstance(exc, (UsageError, ApiError, NotFoundError))


# ---------------------------------------------------------------- exporting


def _secret_name(name: str) -> bool:
    normal = re.sub(r"\W+", "_", name.strip().lower())
    return any(word in normal for word in SENSITIVE)


def _mask_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: MASK if _secret_name(str(key)) and item is not None else _mask_keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mask_keys(item) for item in value]
    return value


@dataclass
class Export:
    """The server's objects in astro's shape, and how many values are masked in it."""

    data: dict
    masked: int  # values written as '***' (by the server, or by the export without --include-secrets)
    counts: dict


def export(client: AirflowClient, *, include_secrets: bool = False) -> Export:
    """Without `include_secrets` passwords and secret keys are written as '***'; with it, as the
    server shows them (Airflow itself masks them unless its hide_sensitive_var_conn_fields is off)."""
    connections = []
    for conn in client.connections():
        extra = _json(conn.extra) or None
        connections.append({
            "conn_id": conn.connection_id, "conn_type": conn.conn_type, "conn_host": conn.host,
            "conn_schema": conn.schema, "conn_login": conn.login,
            "conn_password": conn.password if include_secrets or conn.password is None else MASK,
            "conn_port": conn.port,
            "conn_extra": extra if include_secrets else _mask_keys(extra),
        })
    variables = []
    for variable in client.variables():
        value = variable.value
        if not include_secrets and value is not None:
            parsed = _json(value)
            if _secret_name(variable.key):
                value = MASK
            elif isinstance(parsed, (dict, list)) and _mask_keys(parsed) != parsed:
                value = json.dumps(_mask_keys(parsed))
        variables.append({"variable_name": variable.key, "variable_value": value})
    pools = [
        {"pool_name": pool.name, "pool_slot": pool.slots, "pool_description": pool.description or ""}
        for pool in client.pools()
    ]
    masked = _count_masks([[c["conn_password"], c["conn_extra"]] for c in connections]) + _count_masks(
        [_json(v["variable_value"]) for v in variables]
    )
    data = {"airflow": {"connections": connections, "pools": pools, "variables": variables}}
    return Export(data, masked, {"connections": len(connections), "variables": len(variables), "pools": len(pools)})


def _count_masks(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_count_masks(item) for item in value.values())
    if isinstance(value, list):
        return sum(_count_masks(item) for item in value)
    return int(value == MASK)


def to_yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def write_file(path: Path, text: str, *, private: bool) -> None:
    """Replace `path` atomically; 0600 when it may hold secrets."""
    from mlpipeline.files import atomic_write_bytes

    try:
        atomic_write_bytes(path, text.encode("utf-8"), mode=0o600 if private else 0o644)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
