"""Bearer tokens for the Airflow API: fetched from `POST /auth/token`, cached, renewed once on 401.

The token is cached with its expiry in `<home>/token.json` (mode 0600), so consecutive
commands skip the login round trip. Entries are keyed by a salted scrypt fingerprint of
server URL, user and password: a different password (wrong, or changed) misses the cache
and logs in afresh, so the server judges it, and the file never holds the password or
anything cheap to test guesses against. The one exception is the local stack's generated
password, which `secrets.json` beside this file holds already: a slow hash would protect
nothing there, and costs each command ~35 ms of CPU (issue 22). The password is looked up
once per client, when the first request is sent.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx

from mlflowctl.credentials import plain_http_warning
from mlflowctl.errors import ApiError, AuthError, MlwfError
from mlflowctl.secrets import read_password, write_private

TOKEN_FILE = "token.json"
EXPIRY_MARGIN_S = 60.0
FALLBACK_LIFETIME_S = 3600.0
# scrypt's interactive-login cost (16 MiB, ~35 ms here), paid once per command.
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 2**20, "dklen": 32}


def token_expiry(token: str) -> float:
    """The `exp` claim of a JWT (epoch seconds), read without verifying it; else an hour from now."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return time.time() + FALLBACK_LIFETIME_S


def _expires(entry: object) -> float:
    """An entry's expiry, or 0 for anything that is not a well-formed entry."""
    if isinstance(entry, dict) and isinstance(entry.get("expires_at"), (int, float)):
        return float(entry["expires_at"])
    return 0.0


def _credential(url: str, user: str, password: str) -> bytes:
    return "\0".join((url.rstrip("/"), user, password)).encode()


@functools.lru_cache(maxsize=4)  # a login looks up, then stores: derive the key once
def _slow_fingerprint(salt: bytes, url: str, user: str, password: str) -> str:
    return hashlib.scrypt(_credential(url, user, password), salt=salt, **SCRYPT).hex()


class TokenCache:
    """Tokens by credential fingerprint in one private JSON file, `{"salt": hex, "tokens": {...}}`.

    A missing or damaged file (not JSON, not that shape) is an empty cache, replaced with a
    fresh salt on the next write.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path

    @functools.cached_property
    def _stored_password(self) -> str | None:
        """The generated password in `secrets.json` beside the cache, if any (read once)."""
        if self.path is None:
            return None
        try:
            return read_password(self.path.parent) or None
        except MlwfError:  # damaged: the commands that need it say so; here it is only absent
            return None

    def fingerprint(self, salt: bytes, url: str, user: str, password: str) -> str:
        if password == self._stored_password:
            return hashlib.sha256(salt + _credential(url, user, password)).hexdigest()
        return _slow_fingerprint(salt, url, user, password)

    def _read(self) -> tuple[bytes | None, dict]:
        if self.path is None:
            return None, {}
        try:
            data = json.loads(self.path.read_bytes())
            salt, tokens = bytes.fromhex(data["salt"]), data["tokens"]
        except (OSError, ValueError, KeyError, TypeError):
            return None, {}
        if len(salt) < 16 or not isinstance(tokens, dict):
            return None, {}
        return salt, tokens

    def get(self, url: str, user: str, password: str) -> str | None:
        salt, tokens = self._read()
        if salt is None:
            return None
        entry = tokens.get(self.fingerprint(salt, url, user, password))
        token = entry.get("access_token") if isinstance(entry, dict) else None
        if not isinstance(token, str) or _expires(entry) - EXPIRY_MARGIN_S <= time.time():
            return None
        return token

    def put(self, url: str, user: str, password: str, token: str | None) -> None:
        """Store `token` for this credential (None: forget it); expired entries are dropped."""
        if self.path is None:
            return
        salt, tokens = self._read()
        if salt is None:
            salt, tokens = secrets.token_bytes(16), {}
        now = time.time()
        tokens = {key: entry for key, entry in tokens.items() if _expires(entry) > now}
        key = self.fingerprint(salt, url, user, password)
        if token is None:
            tokens.pop(key, None)
        else:
            tokens[key] = {"access_token": token, "expires_at": token_expiry(token)}
        try:
            write_private(self.path, json.dumps({"salt": salt.hex(), "tokens": tokens}, indent=2))
        except OSError:
            pass  # a cache we cannot write only costs a login next time


class TokenAuth(httpx.Auth):
    """Adds `Authorization: Bearer ...`; logs in when needed and renews once on a 401.

    `warn` receives a warning before a password is sent where it can be read on the way.
    """

    requires_response_body = True

    def __init__(
        self,
        url: str,
        user: str,
        password: Callable[[], str],
        cache: TokenCache,
        *,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self._ask_password = password
        self._password: str | None = None
        self._cache = cache
        self._warn = warn
        self._token: str | None = None

    def password(self) -> str:
        if self._password is None:
            self._password = self._ask_password()
        return self._password

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        fresh = False
        token = self._token or self._cache.get(self.url, self.user, self.password())
        if token is None:
            token = yield from self._login(request)
            fresh = True
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401 and not fresh:
            self._cache.put(self.url, self.user, self.password(), None)
            token = yield from self._login(request)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    def _login(self, request: httpx.Request) -> Iterator[httpx.Request]:
        warning = plain_http_warning(self.url)
        if warning and self._warn:
            self._warn(warning)
            self._warn = None  # once per client, not again on a renewal
        # The login request carries the original's extensions: without its timeout it could hang.
        response = yield httpx.Request(
            "POST",
            f"{self.url}/auth/token",
            json={"username": self.user, "password": self.password()},
            extensions=request.extensions,
        )
        if response.status_code in (401, 403):
            raise AuthError(
                f"Airflow at {self.url} refused the password of user '{self.user}'",
                hint="set MLWF_AIRFLOW_PASSWORD, or for a stack mlwf started check `mlwf config`",
            )
        if response.status_code == 404:
            raise ApiError(f"{self.url} has no /auth/token: is it an Airflow 3 API server?")
        if response.status_code >= 400:
            raise ApiError(f"login at {self.url}/auth/token failed: HTTP {response.status_code}")
        try:
            token = response.json()["access_token"]
            if not (isinstance(token, str) and token.isascii() and token.isprintable()):
                raise TypeError("not a token")
        except (ValueError, KeyError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise ApiError(f"{self.url}/auth/token answered without an access_token")
        self._token = token
        self._cache.put(self.url, self.user, self.password(), token)
        return token
