"""What an S3 error means to letta-ops: its code, status, and whether it is a miss, a lost race or
an unsupported condition.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

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


# --------------------------------------------------------------------------------------------
# The store out of reach
# --------------------------------------------------------------------------------------------

_ENDPOINT_IN_TEXT = re.compile(
    r'\s*(?:on |from |to )?(?:the )?(?:endpoint|proxy) URL:\s*"[^"]*"\.?'
)


def _origin(url: str) -> str:
    """``scheme://host:port`` of ``url``: botocore's text carries the whole URL, user-info
    (a credential, if someone put one there), bucket, key and query included."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}" if parts.scheme else host


def unreachable_store_sentence(exc: BaseException) -> str | None:
    """One sentence for a store that did not answer (refused, closed, timed out), or None.

    botocore's own text names the failure well but ends in the full endpoint URL; the operator
    needs which store, what happened and what to do, without the URL's user-info or query.
    """
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, BotoConnectionError | HTTPClientError):
            kwargs: dict[str, Any] = getattr(current, "kwargs", {}) or {}
            url = str(kwargs.get("endpoint_url") or kwargs.get("proxy_url") or "")
            where = f" at {_origin(url)}" if url else ""
            what = _ENDPOINT_IN_TEXT.sub("", str(current)).strip().rstrip(".") or "no answer"
            return (
                f"the backup store{where} did not answer ({what}); check that it is reachable "
                "from this host, then run the command again"
            )
        current = current.__cause__ or current.__context__
    return None
