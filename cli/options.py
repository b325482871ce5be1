"""Parser pieces every area shares: the parser class, ``--server/--json/--operator``,
``--store``, ``--wait``, ``--reset``, and the argument types that refuse bad input at once."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from ..tasks.errors import EXIT_BAD_INPUT
from ..tasks.runs.report_schema import SCHEMA_VERSION


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence and exit 2, without the usage dump
        self.exit(
            EXIT_BAD_INPUT, f"letta-ops: error: {message}\nRun '{self.prog} --help' for usage.\n"
        )


def version(value: str) -> str:
    """argparse type: refuse ``latest`` and non-server versions before anything runs."""
    from ..tasks.letta.versions import UnsupportedLettaVersion, parse_server_version

    try:
        return str(parse_server_version(value))
    except UnsupportedLettaVersion as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def port(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (1-65535)")
    return number


def future_date(value: str) -> datetime:
    """argparse type: a date (``YYYY-MM-DD``, UTC midnight) or an ISO time, in the future."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date; write YYYY-MM-DD or an ISO time such as 2027-01-31T12:00:00Z"
        ) from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if moment <= datetime.now(UTC):
        raise argparse.ArgumentTypeError(f"{value} is in the past; a pin must end later")
    return moment


def allow_legacy_option(parser: argparse.ArgumentParser) -> None:
    """``--allow-legacy``: use a set written before sets were authenticated, named explicitly."""
    parser.add_argument(
        "--allow-legacy",
        action="store_true",
        help="use this set although its manifest carries no authentication (written by a "
        "letta-ops before sets were authenticated); never needed for sets written since",
    )


def common_options(with_json: bool = True) -> argparse.ArgumentParser:
    """``--server``, ``--json`` and ``--operator``: on every command. ``with_json=False`` leaves
    ``--json`` out, for a command that adds it with :func:`json_list_options`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        metavar="NAME",
        help="load the saved blocks called NAME; without it LETTA_BASE_URL, "
        "LETTA_API_KEY and LETTA_PG_URI describe the server",
    )
    if with_json:
        common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common.add_argument(
        "--operator",
        metavar="NAME",
        help="who runs this, for the audit history (default: LETTA_OPS_OPERATOR, else your "
        "login name)",
    )
    return common


def json_list_options(key: str) -> argparse.ArgumentParser:
    """``--json`` or the deprecated ``--json-list``, one or the other (exit 2 for both): for
    the commands whose ``--json`` was a plain list before it became ``{"schema_version",
    KEY: [...]}`` (``backups list``, ``history``). ``--json-list`` prints the old list for one
    more release."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--json",
        action="store_true",
        help=f'print machine-readable JSON: {{"schema_version": {SCHEMA_VERSION}, "{key}": [...]}}',
    )
    group.add_argument(
        "--json-list",
        action="store_true",
        help="deprecated, will be removed in the next release: print the rows as the old plain "
        "JSON list (without schema_version); use --json",
    )
    return parser


def store_options() -> argparse.ArgumentParser:
    """The ``--store`` option every command that reads or writes backup sets shares."""
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--store",
        metavar="URL",
        help="backup repository: s3://BUCKET/PREFIX or file:///PATH (default: "
        "LETTA_OPS_STORE, else the server's saved store block)",
    )
    store.add_argument(
        "--encryption-key-file",
        metavar="FILE",
        help="file of client-side encryption keys, one base64 key per line: the first "
        "encrypts new sets, every line decrypts (default: LETTA_OPS_ENCRYPTION_KEY_FILE, "
        "LETTA_OPS_ENCRYPTION_KEY, else the store block's key; none: sets are not encrypted)",
    )
    return store


def lock_options(default: float | None) -> argparse.ArgumentParser:
    """The ``--wait`` option of every command that takes the server's destructive lock."""
    lock = argparse.ArgumentParser(add_help=False)
    shown = "the flow's default" if default is None else f"{default:g}; 0 refuses at once"
    lock.add_argument(
        "--wait",
        type=float,
        default=default,
        metavar="SECONDS",
        help=f"wait this long for another destructive run on the server to finish ({shown})",
    )
    return lock


def days(value: str) -> float:
    """argparse type: a non-negative number of days (fractions allowed)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value} is not a number of days") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not a non-negative number of days")
    return number


def object_lock_options() -> argparse.ArgumentParser:
    """``--lock-days`` / ``--lock-mode``: S3 Object Lock on the objects of new backup sets."""
    lock = argparse.ArgumentParser(add_help=False)
    lock.add_argument(
        "--lock-days",
        type=days,
        default=None,
        metavar="DAYS",
        help="lock every object of the new set with S3 Object Lock for DAYS (the bucket must "
        "have Object Lock enabled; refused before anything is written otherwise); 0 for no "
        "lock; default LETTA_OPS_LOCK_DAYS, else the store block's lock_days",
    )
    lock.add_argument(
        "--lock-mode",
        type=str.upper,
        choices=["GOVERNANCE", "COMPLIANCE"],
        default=None,
        help="governance (a principal allowed s3:BypassGovernanceRetention can lift it) or "
        "compliance (nobody can); default LETTA_OPS_LOCK_MODE, else the block's, else "
        "governance",
    )
    return lock


def reset_options() -> argparse.ArgumentParser:
    """The ``--reset`` option of every command that empties a database and restores into it."""
    reset = argparse.ArgumentParser(add_help=False)
    reset.add_argument(
        "--reset",
        choices=["auto", "recreate", "in-place"],
        default=None,
        help="how to empty the database before a restore: 'recreate' drops and creates it "
        "with pgvector (needs CREATEDB and a superuser); 'in-place' keeps the database and "
        "pgvector and drops the schema's objects (needs only their ownership, as on managed "
        "PostgreSQL); default: the database block's setting or LETTA_OPS_RESET_MODE, else "
        "whichever the role may do. The plan says which one runs.",
    )
    return reset


def lock_wait(args: argparse.Namespace) -> dict[str, float]:
    """``--wait`` when given; else the flow's own default."""
    return {} if args.wait is None else {"lock_timeout_seconds": args.wait}
