"""The one synchronous HTTP client for llama-server's JSON API (and the proxy's, which has its shape).

``doctor`` reads every answer, error statuses included (:meth:`LlamaClient.request`); ``bench``, the
demo and the build probe want a JSON body or a clear error (:meth:`LlamaClient.json`); the rig, the
demo and the benchmark's Tightwad wait for a server that is still starting (:meth:`LlamaClient.wait_json`).
Every call has a timeout, so a hung server cannot hang a check. Anything that is not a usable answer is
one :class:`LlamaServerError`, a :class:`UserError` whose text names the request and what went wrong.

The proxy's own calls to its backends are asynchronous and live in ``proxy/upstream.py``.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llamafleet.errors import UserError


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # parsed JSON, or None when the body is not JSON


class LlamaServerError(UserError):
    """No usable answer: nothing answered (``status`` None: refused, timed out, reset), an HTTP error
    status, or a body that is not JSON. ``problem`` is the message without the request."""

    def __init__(self, method: str, url: str, problem: str, status: int | None = None) -> None:
        super().__init__(f"{method} {url} {problem}")
        self.method, self.url, self.problem, self.status = method, url, problem, status

    @property
    def reason(self) -> str:
        """What went wrong, to follow a URL: "[Errno 111] Connection refused", "answered HTTP 503: ..."."""
        return self.problem.removeprefix("failed: ")


class LlamaClient:
    """Calls with ``timeout`` seconds each, a bearer ``token`` and extra ``headers`` on every call;
    ``context``: the SSL context of https:// calls (a TLS proxy: ``llamafleet.tls.pinned_context``)."""

    def __init__(self, timeout: float = 30.0, *, token: str | None = None,
                 headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None) -> None:
        self.timeout = timeout
        self.token = token
        self.headers = dict(headers or {})
        self.context = context

    def _open(self, url: str, data: Any, token: str | None, timeout: float | None):
        headers = {"Content-Type": "application/json", **self.headers}
        token = token or self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        body = None if data is None else json.dumps(data).encode()
        request = urllib.request.Request(url, data=body, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout if timeout is None else timeout,
                                          context=self.context)
        except urllib.error.HTTPError as err:
            return err  # an answer all the same: the caller reads its status and body
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise LlamaServerError(request.get_method(), url, f"failed: {reason}") from None

    def request(self, url: str, *, data: Any = None, token: str | None = None, timeout: float | None = None) -> Reply:
        """Any HTTP answer (POST when ``data`` is given); raises only when nothing answered."""
        with self._open(url, data, token, timeout) as resp:
            try:
                raw = resp.read()
            except OSError as err:  # reset or timed out in the middle of the body
                raise LlamaServerError("GET" if data is None else "POST", url, f"failed: {err}") from None
            return Reply(resp.status, _json_or_none(raw))

    def json(self, url: str, *, data: Any = None, token: str | None = None, timeout: float | None = None) -> Any:
        """The JSON body of a successful answer; an error status or a body that is not JSON raises."""
        method = "GET" if data is None else "POST"
        with self._open(url, data, token, timeout) as resp:
            try:
                raw = resp.read()
            except OSError as err:
                raise LlamaServerError(method, url, f"failed: {err}") from None
            if resp.status >= 400:
                detail = raw.decode(errors="replace")[:300]
                raise LlamaServerError(method, url, f"answered HTTP {resp.status}: {detail}", resp.status)
        try:
            return json.loads(raw)
        except ValueError:
            raise LlamaServerError(method, url, "did not answer JSON", resp.status) from None

    def wait_json(self, url: str, *, within: float, poll: float = 1.0, token: str | None = None,
                  ready: Callable[[Any], bool] | None = None, alive: Callable[[], None] | None = None) -> Any:
        """Ask ``url`` until it answers JSON that ``ready`` accepts (any JSON by default), for at most
        ``within`` seconds; then the last error is raised. ``alive`` is called before every try and
        raises when the server has gone (so a crashed server does not cost the whole wait)."""
        deadline = time.monotonic() + within
        while True:
            if alive is not None:
                alive()
            try:
                body = self.json(url, token=token)
                if ready is None or ready(body):
                    return body
                error = LlamaServerError("GET", url, f"answered {json.dumps(body)[:300]}")
            except LlamaServerError as err:
                error = err
            if time.monotonic() > deadline:
                raise error
            time.sleep(poll)


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
