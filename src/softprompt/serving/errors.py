"""The API's error answers: `{"error": {"message", "type", "param", "code"}}` with an HTTP
status, as OpenAI's API gives them."""

from __future__ import annotations

from fastapi.responses import JSONResponse

RETRY_AFTER_SECONDS = 1


class APIError(Exception):
    """An error answered as {"error": {message, type, param, code}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code=None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 401:
            kind = "authentication_error"
        body = {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status == 429 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def busy() -> APIError:
    """429: the engine's queue is full."""
    message = f"the server is busy (its queue is full); retry after {RETRY_AFTER_SECONDS} s"
    return APIError(429, message, None, "queue_full")
