"""Talking to servers the pipeline does not control: URL data sources and the webhook.

Every exchange has an overall deadline, not only per-read timeouts (a server sending one
byte every few seconds never trips a read timeout): a timer shuts the connection's socket
down when the deadline passes, which ends any blocked read at once, whether the server was
sending headers or body. Answers are read up to a byte cap. Redirects are followed only
within one host, never from https to http. Every URL that is recorded (XCom, metadata,
notifications, messages) goes through `redact_url` first. Stdlib at import; httpx lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
import time
from typing import IO, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: Query parameters whose values are secrets (tokens, keys, signatures of pre-signed URLs).
_SECRET_QUERY = re.compile(r"token|key|pass|pwd|secret|sig|auth|cred|session", re.IGNORECASE)
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
MAX_REDIRECTS = 5
REDACTED = "REDACTED"


class RemoteError(RuntimeError):
    """A server could not give what was asked; the message holds only redacted URLs.

    `retryable`: a later try may succeed (network trouble, 5xx, 429, the deadline).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def redact_url(url: str, *, keep_path: bool = True) -> str:
    """`url` without credentials: no ``user:password@``, secret-looking query values replaced.

    ``keep_path=False`` also hides the path and query (webhook paths are often the secret).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # unparseable: show no more than the scheme
        return f"{url.split(':', 1)[0]}://{REDACTED}" if "://" in url else REDACTED
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    if not keep_path:
        hidden = parts.path not in ("", "/") or parts.query
        return f"{parts.scheme}://{netloc}/…" if hidden else f"{parts.scheme}://{netloc}"
    query = urlencode(
        [(k, REDACTED if _SECRET_QUERY.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="/:",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted (exception messages, notification text)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


class Deadline:
    """An overall deadline for one or more requests of an httpx client.

    Pass `trace` as the request's ``trace`` extension: it learns each new connection's
    socket, which the timer shuts down when time is up.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._stream: Any = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            with self._lock:
                self._stream = info.get("return_value")
                if self.expired:
                    self._cut()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._cut()

    def _cut(self) -> None:
        sock = self._stream.get_extra_info("socket") if self._stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):  # the plain socket call: an SSLSocket's own shutdown
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # would change its state under the reader


def _timeout(deadline: Deadline, per_operation: float) -> Any:
    import httpx

    return httpx.Timeout(max(0.001, min(per_operation, deadline.remaining())))


def _same_host(origin: Any, target: Any) -> bool:
    downgrade = origin.scheme == "https" and target.scheme != "https"
    return not downgrade and (origin.host or "").lower() == (target.host or "").lower()


def download(
    url: str,
    fh: IO[bytes],
    *,
    max_bytes: int,
    seconds: float,
    timeout: float = 30.0,
    transport: Any = None,
) -> str:
    """GET `url` into the open binary file `fh`; return the body's sha256.

    Raises RemoteError (redacted message) for a refused redirect, a status other than 200,
    an answer over `max_bytes`, a transfer still going after `seconds`, or a network error.
    """
    import httpx

    shown = redact_url(url)
    with Deadline(seconds) as deadline:
        try:
            with httpx.Client(timeout=_timeout(deadline, timeout), transport=transport) as client:
                request = client.build_request("GET", url, extensions={"trace": deadline.trace})
                for _ in range(MAX_REDIRECTS + 1):
                    response = client.send(request, stream=True)
                    try:
                        if response.is_redirect and response.next_request is not None:
                            target = response.next_request
                            if not _same_host(request.url, target.url):
                                raise RemoteError(
                                    f"GET {shown} redirects to {redact_url(str(target.url))}: only redirects within "
                                    "one host (and never from https to http) are followed; use the final URL"
                                )
                            request = target
                            continue
                        return _receive(response, fh, shown, max_bytes, deadline)
                    finally:
                        response.close()
                raise RemoteError(f"GET {shown} redirects more than {MAX_REDIRECTS} times")
        except httpx.HTTPError as exc:  # connect errors, timeouts, protocol errors, a cut connection
            if deadline.expired:
                late = f"GET {shown} did not finish within {seconds:g} s (MLWF_DOWNLOAD_TIMEOUT)"
                raise RemoteError(late, retryable=True) from None
            raise RemoteError(f"cannot download {shown}: {type(exc).__name__}: {redact_text(str(exc))}",
                              retryable=True) from None
        except httpx.InvalidURL as exc:
            raise RemoteError(f"invalid URL {shown}: {redact_text(str(exc))}") from None


def _receive(response: Any, fh: IO[bytes], shown: str, max_bytes: int, deadline: Deadline) -> str:
    """Check a final answer's status and size, stream its body into `fh`; return its sha256."""
    import httpx

    code = response.status_code
    if code != 200:
        raise RemoteError(f"GET {shown} answered HTTP {code}", retryable=code >= 500 or code in (408, 429))
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise RemoteError(
            f"GET {shown} announces {declared} bytes, over the cap of {max_bytes} (MLWF_DOWNLOAD_MAX_BYTES)"
        )
    digest, size = hashlib.sha256(), 0
    for chunk in response.iter_bytes():  # decoded: the cap bounds what lands on disk
        size += len(chunk)
        if size > max_bytes:
            raise RemoteError(f"GET {shown} sent more than the cap of {max_bytes} bytes (MLWF_DOWNLOAD_MAX_BYTES)")
        fh.write(chunk)
        digest.update(chunk)
    if deadline.expired:  # a cut looks like the end of a body that runs to the connection's close
        raise httpx.ReadTimeout("deadline passed")
    return digest.hexdigest()


def post_json(client: Any, url: str, body: bytes, deadline: Deadline, *, timeout: float) -> int:
    """POST `body` as JSON with `client` within `deadline`; return the status (raised for 4xx/5xx).

    The answer's body is never read: only its status line and headers (httpx caps those).
    """
    import httpx

    late = httpx.TimeoutException(f"no answer within {deadline.seconds:g} s")
    if deadline.expired or deadline.remaining() <= 0:
        raise late
    try:
        with client.stream(
            "POST", url, content=body, headers={"Content-Type": "application/json"},
            timeout=_timeout(deadline, timeout), extensions={"trace": deadline.trace},
        ) as response:
            response.raise_for_status()
            return response.status_code
    except httpx.TransportError:
        if deadline.expired:
            raise late from None
        raise
