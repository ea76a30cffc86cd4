"""Secrets generated once per state directory, kept in files of mode 0600.

Never a default password and never auth switched off: the admin password, the JWT
secret every Airflow component must share, the Fernet key, and the passwords of the
databases and Grafana that the docker backend runs are all random, made on first use.
"""

from __future__ import annotations

import base64
import json
import os
import secrets as random
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflowctl.errors import MlwfError

SECRETS_FILE = "secrets.json"
PASSWORDS_FILE = "simple_auth_manager_passwords.json"
ADMIN_USER = "admin"


@dataclass(frozen=True)
class Secrets:
    admin_user: str
    admin_password: str
    jwt_secret: str
    fernet_key: str
    postgres_password: str
    grafana_password: str


def _generate() -> Secrets:
    return Secrets(
        admin_user=ADMIN_USER,
        admin_password=random.token_urlsafe(18),
        jwt_secret=random.token_urlsafe(32),
        fernet_key=base64.urlsafe_b64encode(os.urandom(32)).decode(),
        postgres_password=random.token_urlsafe(18),
        grafana_password=random.token_urlsafe(18),
    )


def write_private(path: Path, text: str) -> None:
    """Write atomically a file only its owner can read (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def load_or_create(home: Path) -> Secrets:
    """The stack's secrets, generated on first call and the same on every later one."""
    path = Path(home) / SECRETS_FILE
    if path.exists():
        try:
            return Secrets(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise MlwfError(f"{path} is damaged ({exc}); restore it or remove the state directory") from None
    created = _generate()
    write_private(path, json.dumps(asdict(created), indent=2))
    write_private(Path(home) / PASSWORDS_FILE, json.dumps({created.admin_user: created.admin_password}))
    return created


def read_admin_password(home: Path) -> str | None:
    """The admin password of a stack mlwf started in `home`, or None when there is none."""
    path = Path(home) / SECRETS_FILE
    try:
        return json.loads(path.read_text())["admin_password"]
    except (OSError, ValueError, LookupError, TypeError):
        return None
