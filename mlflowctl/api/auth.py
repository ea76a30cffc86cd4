"""Bearer tokens for the Airflow API: fetched from `POST /auth/token`, cached, renewed once on 401.

The token is cached with its expiry in `<home>/token.json` (mode 0600), keyed by server URL
and user, so consecutive commands skip the login round trip. The password is asked for
lazily (a callable), only when no valid token is cached: a prompt never appears needlessly.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx

from mlflowctl.errors import ApiError, AuthError
from mlflowctl.secrets import write_private

TOKEN_FILE = "token.json"
EXPIRY_MARGIN_S = 60.0
FALLBACK_LIFETIME_S = 3600.0


def token_expiry(token: str) -> float:
    """The `exp` claim of a JWT (epoch seconds), read without verifying it; else an hour from now."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return time.time() + FALLBACK_LIFETIME_S


class TokenCache:
    """Tokens by (url, user) in one private JSON file; a missing or damaged file is an empty cache."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    @staticmethod
    def key(url: str, user: str) -> str:
        return f"{url.rstrip('/')}|{user}"

    def _read(self) -> dict:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, url: str, user: str) -> str | None:
        entry = self._read().get(self.key(url, user))
        if not isinstance(entry, dict):
            return None
        token, expires = entry.get("access_token"), entry.get("expires_at", 0)
        if not isinstance(token, str) or not isinstance(expires, (int, float)):
            return None
        return token if expires - EXPIRY_MARGIN_S > time.time() else None

    def put(self, url: str, user: str, token: str | None) -> None:
        if self.path is None:
            return
        data = self._read()
        if token is None:
            data.pop(self.key(url, user), None)
        else:
            data[self.key(url, user)] = {"access_token": token, "expires_at": token_expiry(token)}
        try:
            write_private(self.path, json.dumps(data, indent=2))
        except OSError:
            pass  # a cache we cannot write only costs a login next time


class TokenAuth(httpx.Auth):
    """Adds `Authorization: Bearer ...`; logs in when needed and renews once on a 401."""

    requires_response_body = True

    def __init__(self, url: str, user: str, password: Callable[[], str], cache: TokenCache) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self._password = password
        self._cache = cache
        self._token: str | None = None

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        fresh = False
        token = self._token or self._cache.get(self.url, self.user)
        if token is None:
            token = yield from self._login(request)
            fresh = True
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401 and not fresh:
            self._cache.put(self.url, self.user, None)
            token = yield from self._login(request)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    def _login(self, request: httpx.Request) -> Iterator[httpx.Request]:
        # The login request carries the original's extensions: without its timeout it could hang.
        response = yield httpx.Request(
            "POST",
            f"{self.url}/auth/token",
            json={"username": self.user, "password": self._password()},
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
            raise ApiError(f"{self.url}/auth/token answered without an access_token") from None
        self._token = token
        self._cache.put(self.url, self.user, token)
        return token
