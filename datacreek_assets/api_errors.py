"""One error shape for the platform's HTTP APIs (serving router, hot queries, curation):
``{"error": {"type", "message"}}`` with its status code."""

from fastapi.responses import JSONResponse


def error(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)
