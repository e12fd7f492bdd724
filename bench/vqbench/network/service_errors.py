"""Requests the cloud service rejects, as JSON error responses ``{"error", "detail", "fix"}``."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from vqbench.errors import VqbenchError


class ServiceProblem(VqbenchError):
    """A request the service rejects, with the HTTP status, an error code and the fix."""

    def __init__(self, status: int, error: str, detail: str, fix: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.fix = fix
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": self.error, "detail": self.detail, "fix": self.fix}
        return JSONResponse(body, status_code=self.status, headers=self.headers)
