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

from mlflowctl.errors import DamagedStateError
from mlflowctl.state import read_json, write_durably

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


def generate() -> Secrets:
    """New random secrets (also for a throwaway run that keeps none: `mlwf test`)."""
    return Secrets(
        admin_user=ADMIN_USER,
        admin_password=random.token_urlsafe(18),
        jwt_secret=random.token_urlsafe(32),
        fernet_key=base64.urlsafe_b64encode(os.urandom(32)).decode(),
        postgres_password=random.token_urlsafe(18),
        grafana_password=random.token_urlsafe(18),
    )


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (0600), atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, text)


_RESTORE = "restore it from a backup, or start over with `mlwf down --volumes` (deletes the stack's data)"


def load_or_create(home: Path) -> Secrets:
    """The stack's secrets, generated on first call and the same on every later one.

    secrets.json is the source of truth; Airflow's passwords file is checked against it on
    every call and rewritten when it is missing, damaged or different. A missing secrets.json
    beside existing metadata is refused: new keys would lock the user out of their data.
    """
    home = Path(home)
    path = home / SECRETS_FILE
    data = read_json(path, fix=_RESTORE)
    if data is None:
        from mlflowctl.backends.local.record import RECORD_FILE

        if (home / "airflow" / "airflow.db").exists() or (home / RECORD_FILE).exists():
            raise DamagedStateError(
                f"{path} is missing but the stack in {home} has data (its Fernet key and passwords are gone)",
                hint=_RESTORE,
            )
        current = generate()
        write_private(path, json.dumps(asdict(current), indent=2))
    else:
        try:
            current = Secrets(**data)
        except TypeError:
            raise DamagedStateError(f"{path} is damaged: its keys are not mlwf's secrets", hint=_RESTORE) from None
    _sync_passwords_file(home / PASSWORDS_FILE, current)
    return current


def _sync_passwords_file(path: Path, current: Secrets) -> None:
    """Airflow's copy of the admin password, repaired from secrets.json when it differs."""
    expected = {current.admin_user: current.admin_password}
    try:
        found = read_json(path, fix="")
    except DamagedStateError:
        found = None
    if found != expected:
        write_private(path, json.dumps(expected))


def read_password(home: Path, key: str = "admin_password") -> str | None:
    """A generated password (a key of `Secrets`) of the stack mlwf started in `home`, or None when
    there is none."""
    path = Path(home) / SECRETS_FILE
    data = read_json(path, fix=_RESTORE)
    if data is None:
        return None
    password = data.get(key)
    if not isinstance(password, str):
        raise DamagedStateError(f"{path} is damaged: it has no {key.replace('_', ' ')}", hint=_RESTORE)
    return password
