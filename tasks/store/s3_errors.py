"""What an S3 error means to letta-ops: its code, status, and whether it is a miss, a lost race or
an unsupported condition.
"""

from __future__ import annotations

from typing import Any

# --------------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------------


def _error_code(exc: Exception) -> str:
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _http_status(exc: Exception) -> int:
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _is_not_found(exc: Exception) -> bool:
    return _error_code(exc) in {"404", "NoSuchKey", "NotFound"} or _http_status(exc) == 404


def _is_precondition_failed(exc: Exception) -> bool:
    # 412 when the key exists; 409 ConditionalRequestConflict when another upload raced us.
    return _error_code(exc) in {"PreconditionFailed", "ConditionalRequestConflict"} or (
        _http_status(exc) in {409, 412} and _error_code(exc) != "BucketAlreadyExists"
    )


def _is_conditional_unsupported(exc: Exception) -> bool:
    """Some S3-compatible stores reject ``If-None-Match`` instead of ignoring it."""
    return _error_code(exc) in {"NotImplemented", "NotSupported"} or _http_status(exc) == 501
