"""Errors in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}`` with the matching status, and
the last line of defence: any exception nothing else answered becomes a 500 in that shape, logged with a request id
(never a text/plain body, never the exception's text, which may name server paths)."""

from __future__ import annotations

import hmac
import json
import logging
import uuid

from fastapi import Request
from fastapi.responses import Response

log = logging.getLogger("mmgpt.serve")


class APIError(Exception):
    """An error answered to the client; ``message`` names the bad value and the fix."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> Response:
        headers = {**({"Retry-After": "1"} if self.status in (429, 503) else {}), **(headers or {})}
        # ASCII JSON: a message quoting a client's lone surrogate ("\ud800") must not fail to encode as UTF-8.
        return Response(
            json.dumps(self.body()), status_code=self.status, headers=headers, media_type="application/json"
        )


async def api_error_handler(_request: Request, error: Exception) -> Response:
    assert isinstance(error, APIError)
    return error.response()


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex[:20]}"


def internal_error(request_id: str) -> APIError:
    return APIError(
        500,
        f"internal server error (request id {request_id}); the server's log has the details under that id",
        type="server_error",
        code="internal_error",
    )


class CatchAll:
    """ASGI middleware for the paths under ``prefix``: an exception no handler answered is logged with its
    traceback and a request id, and answered as :func:`internal_error` (when the response has not started; a
    stream that fails later reports in the stream itself)."""

    def __init__(self, app, prefix: str = "/v1") -> None:
        self.app, self.prefix = app, prefix

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            request_id = new_request_id()
            log.exception("request %s (%s %s) failed", request_id, scope.get("method"), scope["path"])
            if not started:
                await internal_error(request_id).response({"X-Request-Id": request_id})(scope, receive, send)


def require_key(request: Request, api_key: str | None) -> None:
    """Refuse (401) a request without ``Authorization: Bearer API_KEY`` when the server has a key."""
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
        raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")
