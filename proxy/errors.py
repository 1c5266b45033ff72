"""The one place errors become responses: every failure is an OpenAI-shaped envelope
``{"error": {"message", "type", "param", "code"}}`` with a fitting HTTP status, never a traceback."""

from __future__ import annotations

from llamafleet.proxy.backend import BackendError


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def envelope(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def from_backend(err: BackendError, target_name: str, relayed: bool = False) -> ApiError:
    """A target failure: 504 on timeout, 503 when unreachable or overloaded, 502 otherwise.

    ``relayed``: the client's own request went to the server's own endpoint (pass-through). An answer
    there is the server's verdict on that request, so its status and message reach the client as they
    are (a build that does not support a feature refuses it with its own words), in this envelope.
    """
    if relayed and (err.status is not None or err.upstream) and err.status != 503:
        status = err.status or 502  # no status: an error event in the middle of the server's stream
        message = str(err.upstream.get("message") or err)
        type_ = str(err.upstream.get("type") or ("invalid_request_error" if status < 500 else "upstream_error"))
        return ApiError(status, message, type_, "upstream_rejected" if status < 500 else "upstream_failed")
    if err.timeout:
        return ApiError(504, f"the target did not answer in time ({err})", "upstream_error", "upstream_timeout")
    if err.status is None:
        return ApiError(503, f"the target {target_name} is unreachable ({err})", "upstream_error", "upstream_unavailable")
    if err.status == 400:
        # The target refused the request itself (e.g. the context is too long): the client's to fix.
        return invalid(f"the target rejected the request: {err}", code="upstream_rejected")
    if err.status == 503:
        return ApiError(503, f"the target is busy ({err})", "upstream_error", "upstream_busy")
    return ApiError(502, f"the target failed ({err})", "upstream_error", "upstream_failed")


def internal(err: Exception) -> ApiError:
    return ApiError(500, f"internal error: {type(err).__name__}", "server_error", "internal_error")
