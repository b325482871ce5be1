"""Doctor checks of who can reach the server and who can destroy the backups: anonymous access, S3
Object Lock, deletes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .findings import (
    Finding,
    action,
    ok,
    skipped,
)

# --------------------------------------------------------------------------------------------
# Who can reach the server, and who can destroy the backups
# --------------------------------------------------------------------------------------------


def check_server_auth(
    refused: bool | None,
    error: str | None,
    base_url: str,
    password_configured: bool,
    open_by_choice: bool,
) -> Finding:
    """Whether ``GET /v1/agents/`` without credentials is refused.

    Why: a server letta-ops (or a runbook) started without ``--secure`` hands every agent's
    memory to whoever reaches its port, and nobody notices because letta-ops itself sends the
    password. Open is accepted only when the operator said so (``open_server`` /
    ``LETTA_OPS_OPEN_SERVER=1``); the finding still says it is open.
    """
    if refused is None:
        return skipped("server-auth", f"{base_url} did not answer ({error}); see health")
    if refused:
        return ok("server-auth", f"{base_url} refuses GET /v1/agents/ without credentials")
    detail = f"{base_url} answers GET /v1/agents/ without credentials: it is OPEN"
    if open_by_choice:
        return ok("server-auth", f"{detail}, as the operator chose (open_server)")
    if password_configured:
        return action(
            "server-auth",
            f"{detail} although a password is configured (LETTA_API_KEY)",
            "Restart it secured: 'letta-ops runtime stop' then 'letta-ops runtime start "
            "--version X.Y.Z' (it starts with --secure and the password), or set "
            "LETTA_SERVER_SECURE=true and LETTA_SERVER_PASSWORD where it runs.",
        )
    return action(
        "server-auth",
        f"{detail}; anyone who reaches it can read and change every agent",
        "Set LETTA_API_KEY (or the Letta Server block's password) and restart it with "
        "'letta-ops runtime start', or declare it open on purpose with LETTA_OPS_OPEN_SERVER=1.",
    )


def anonymous_access_refused(base_url: str) -> tuple[bool | None, str | None]:
    """(refused?, error): the same probe the process runtime runs after every start."""
    import httpx

    from ..runtimes.process import anonymous_request_refused

    try:
        return anonymous_request_refused(base_url), None
    except httpx.HTTPError as exc:
        return None, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def requested_object_lock(store, environ: Mapping[str, str] | None = None):
    """The lock new sets will be written with: ``LETTA_OPS_LOCK_DAYS`` / ``_MODE``, else the
    store block's; None when none is asked for. Bad values raise ``Refused``."""
    from ..store.object_lock import (
        LOCK_DAYS_ENV,
        LOCK_MODE_ENV,
        object_lock_from_settings,
    )

    env = os.environ if environ is None else environ
    if env.get(LOCK_DAYS_ENV, "").strip():
        return object_lock_from_settings(
            env[LOCK_DAYS_ENV], env.get(LOCK_MODE_ENV), source=LOCK_DAYS_ENV
        )
    return getattr(store, "lock", None)


def check_backup_lock(bucket_lock, requested, store_url: str) -> Finding:
    """Whether the store can keep sets immutable (S3 Object Lock) and whether new sets are
    locked. ``bucket_lock`` is None for a store that has no Object Lock (a directory)."""
    asked = (
        f"; new sets are locked {requested.mode.lower()} for {requested.days:g} day(s)"
        if requested
        else ""
    )
    if bucket_lock is None or not bucket_lock.enabled:
        where = "a directory cannot lock objects" if bucket_lock is None else "no Object Lock"
        if requested:
            return action(
                "backup-lock",
                f"{store_url}: {where}, but a lock of {requested.days:g} day(s) is asked for: "
                "every backup will be refused",
                "Back up into an S3 bucket created with Object Lock enabled, or unset "
                "LETTA_OPS_LOCK_DAYS (or the store block's lock_days).",
            )
        return ok(
            "backup-lock",
            f"{store_url}: {where}; sets can be deleted by any credentials allowed to delete",
        )
    if not bucket_lock.default_mode and not requested:
        return ok(
            "backup-lock",
            f"{store_url}: {bucket_lock.describe()}; new sets are NOT locked (set "
            "LETTA_OPS_LOCK_DAYS or pass --lock-days)",
        )
    return ok("backup-lock", f"{store_url}: {bucket_lock.describe()}{asked}")


def check_backup_delete(can_delete: bool | None, sets_locked: bool, store_url: str) -> Finding:
    """Whether the credentials in use can delete objects (a probe that deletes nothing).

    Credentials that can delete sets that nothing locks are how a leaked key or ransomware
    destroys every backup: that needs action. Deleting rights with locked sets, or no
    deleting rights, are reported as they are.
    """
    if can_delete is None:
        return skipped("backup-delete", f"{store_url}: a local directory (the probe is for S3)")
    if not can_delete:
        return ok("backup-delete", f"{store_url}: these credentials cannot delete (AccessDenied)")
    if sets_locked:
        return ok(
            "backup-delete",
            f"{store_url}: these credentials can delete, but Object Lock keeps locked sets "
            "until their lock ends",
        )
    return action(
        "backup-delete",
        f"{store_url}: these credentials can delete, and nothing locks the sets: a leaked key "
        "can destroy every backup",
        "Back up with credentials that cannot delete (README 'Least privilege': backup, "
        "restore and prune roles), or lock sets with --lock-days on a bucket with Object Lock.",
    )
