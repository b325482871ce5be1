"""Run a pinned Letta server version with Docker Compose.

Why: the incident letta-ops exists for began with ``image: letta/letta:latest`` in an operator's
compose file; one ``docker compose pull`` moved the server from 0.11.3 to 0.16.2 across a schema
break. This module pins the server's image to an exact release and starts it, and nothing else.

Design choices:

* The compose file belongs to the operator. We change one line (the server's ``image:``) and keep
  everything else byte-for-byte: comments, quoting, anchors, other services. A YAML round-trip
  would lose comments and reflow the file, so the edit is line-based and refuses, with one
  sentence, any shape it does not understand instead of guessing.
* ``docker compose`` is called through its command line, as an operator would. Secrets never go
  in argv; whatever the compose file interpolates (``LETTA_PG_URI``, ...) reaches docker through
  the environment.
* The flows call these plain functions from their own steps; ``docker compose`` itself is
  run by :mod:`letta_ops.tasks.docker_compose`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..docker_compose import compose_command, run_compose
from ..errors import Refused
from ..letta.health import wait_for_health
from ..letta.versions import parse_server_version

DEFAULT_IMAGE = "letta/letta"


class ComposeFileError(Refused):
    """The compose file does not have the shape we can pin safely."""


# --------------------------------------------------------------------------------------------
# Reading and pinning the compose file (pure)
# --------------------------------------------------------------------------------------------

_SERVICES_KEY = re.compile(r"^services[ \t]*:[ \t]*(?P<rest>.*)$")
_IMAGE_KEY = re.compile(
    r"^(?P<prefix>[ \t]*image[ \t]*:[ \t]*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^ \t#][^#]*?)?"
    r"(?P<suffix>[ \t]*(?:#.*)?)$"
)


@dataclass(frozen=True)
class _ImageLine:
    """Where the service's ``image:`` value sits, and how it is written."""

    index: int  # line number (0-based) in the file
    prefix: str  # "    image: "
    quote: str  # "", "'" or '"'
    value: str  # the image reference without quotes
    suffix: str  # trailing blanks and comment
    newline: str  # the line's own ending ("\n", "\r\n" or "")


def _lines(text: str) -> list[str]:
    """Split on ``\n`` only, keeping endings (``str.splitlines`` also splits on ``\f``, ...)."""
    return [line for line in re.split(r"(?<=\n)", text) if line]


def _split_newline(line: str) -> tuple[str, str]:
    body = line.rstrip("\r\n")
    return body, line[len(body) :]


def _indent(body: str) -> int:
    return len(body) - len(body.lstrip(" "))


def _is_content(body: str) -> bool:
    """A line that carries YAML (not blank, not only a comment)."""
    stripped = body.strip()
    return bool(stripped) and not stripped.startswith("#")


def _strip_comment(rest: str) -> str:
    """Drop a trailing ``# comment`` (a ``#`` at the start or after a blank)."""
    match = re.search(r"(^|[ \t])#", rest)
    return (rest[: match.start()] if match else rest).strip()


def _key_of(body: str) -> tuple[str, str] | None:
    """``(key, rest)`` for a block mapping line such as ``  "letta_server": &x # c``."""
    text = body.strip()
    match = re.match(
        r"^(\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)'|(?P<plain>[^\s:#'\"][^:#]*?))"
        r"[ \t]*:(?:[ \t]+(?P<rest>.*)|$)",
        text,
    )
    if not match:
        return None
    key = match.group("dq") if match.group("dq") is not None else match.group("sq")
    if key is None:
        key = match.group("plain")
    return key, match.group("rest") or ""


def _find_image_line(text: str, service: str) -> _ImageLine:
    """Locate the ``image:`` line of ``service`` under the top-level ``services:`` mapping."""
    lines = _lines(text)
    bodies = [_split_newline(line)[0] for line in lines]
    if any("\t" in b[: len(b) - len(b.lstrip(" \t"))] for b in bodies if _is_content(b)):
        # YAML forbids tabs in indentation; refuse instead of miscounting levels.
        raise ComposeFileError(
            "The compose file indents with tabs, which YAML does not allow; indent with spaces "
            "and try again."
        )

    # 1. the top-level ``services:`` key
    start = None
    for i, body in enumerate(bodies):
        if body.startswith((" ", "#")) or not body.strip():
            continue
        match = _SERVICES_KEY.match(body)
        if match:
            if _strip_comment(match.group("rest")):
                raise ComposeFileError(
                    "The compose file writes 'services:' in flow style ({...}) or through an "
                    "alias; write it as an indented block mapping so the image can be pinned."
                )
            start = i
            break
    if start is None:
        raise ComposeFileError(
            "The compose file has no top-level 'services:' key; point letta-ops at the compose "
            "file that defines the Letta server."
        )

    # 2. the service key, at the indentation of the first key under ``services:``
    end = len(bodies)
    for i in range(start + 1, len(bodies)):
        if _is_content(bodies[i]) and _indent(bodies[i]) == 0:
            end = i
            break
    service_indent = None
    service_line = None
    for i in range(start + 1, end):
        body = bodies[i]
        if not _is_content(body):
            continue
        if service_indent is None:
            service_indent = _indent(body)
        if _indent(body) != service_indent:
            continue
        parsed = _key_of(body)
        if parsed and parsed[0] == service:
            service_line = i
            rest = _strip_comment(parsed[1])
            if rest and not rest.startswith("&"):
                raise ComposeFileError(
                    f"Service {service!r} in the compose file is written in flow style or as an "
                    f"alias ({rest!r}); write it as an indented block so its image can be pinned."
                )
            break
    if service_line is None:
        raise ComposeFileError(
            f"The compose file has no service named {service!r} under 'services:'; set the "
            f"runtime's service to the name of the Letta server service."
        )

    # 3. the ``image:`` key at the service's child indentation
    image_lines: list[int] = []
    child_indent = None
    for i in range(service_line + 1, end):
        body = bodies[i]
        if not _is_content(body):
            continue
        if _indent(body) <= service_indent:
            break
        if child_indent is None:
            child_indent = _indent(body)
        if _indent(body) == child_indent and _IMAGE_KEY.match(body):
            image_lines.append(i)
    if not image_lines:
        raise ComposeFileError(
            f"Service {service!r} in the compose file has no 'image:' line (it may use 'build:' "
            f"or inherit its image); give it 'image: {DEFAULT_IMAGE}:<version>' so letta-ops "
            f"can pin the version."
        )
    if len(image_lines) > 1:
        raise ComposeFileError(
            f"Service {service!r} in the compose file has {len(image_lines)} 'image:' lines; "
            f"keep exactly one."
        )

    index = image_lines[0]
    body, newline = _split_newline(lines[index])
    match = _IMAGE_KEY.match(body)
    assert match is not None  # matched above
    raw = match.group("value") or ""
    quote = raw[0] if raw[:1] in ("'", '"') else ""
    value = raw[1:-1] if quote else raw
    if value[:1] in ("&", "*", "!", "{", "[", "|", ">"):
        raise ComposeFileError(
            f"The image of service {service!r} is written as a YAML anchor, alias, tag or block "
            f"({value!r}); write it as a plain 'image: {DEFAULT_IMAGE}:<version>' line."
        )
    if "$" in value:
        raise ComposeFileError(
            f"The image of service {service!r} comes from a variable ({value!r}); pin the version "
            f"where that variable is set, or write the image literally in the compose file."
        )
    if not value.strip() and index + 1 < len(bodies):
        following = next((b for b in bodies[index + 1 : end] if _is_content(b)), "")
        if following and _indent(following) > child_indent:
            raise ComposeFileError(
                f"The image of service {service!r} continues on the next line; write it on the "
                f"'image:' line itself."
            )
    return _ImageLine(
        index=index,
        prefix=match.group("prefix"),
        quote=quote,
        value=value.strip(),
        suffix=match.group("suffix"),
        newline=newline,
    )


def _split_image(reference: str) -> tuple[str, str | None, str | None]:
    """``ghcr.io:443/foo/letta:0.16.2@sha256:ab`` -> (``ghcr.io:443/foo/letta``, tag, digest)."""
    name, _, digest = reference.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest or None
    return name, None, digest or None


def compose_image_tag(text: str, service: str) -> str | None:
    """The tag the service's image is pinned to (``"latest"`` for latest, None for no tag).

    An image with no tag means ``latest`` to Docker; we still return None so a caller can say
    "no tag" rather than "latest tag". An image pinned by digest only also returns None.
    """
    return _split_image(_find_image_line(text, service).value)[1]


def pin_compose_image(text: str, service: str, version: str, image: str = DEFAULT_IMAGE) -> str:
    """Return ``text`` with ``service``'s image set to ``<repository>:<version>``.

    The repository already in the file is kept (a mirror such as ``ghcr.io/foo/letta``); a
    digest is dropped, since it would override the tag. ``image`` is used only when the service's
    ``image:`` is empty. Every other byte of the file is kept.

    Raises :class:`~letta_ops.tasks.letta.versions.UnsupportedLettaVersion` for a version that is
    not an exact server release and :class:`ComposeFileError` when the file cannot be pinned safely.
    """
    pinned = str(parse_server_version(version))
    found = _find_image_line(text, service)
    repository = _split_image(found.value)[0] if found.value else image
    new_value = f"{found.quote}{repository}:{pinned}{found.quote}"
    suffix = found.suffix
    if suffix.startswith("#"):  # an empty value followed directly by a comment
        suffix = " " + suffix
    prefix = found.prefix if found.prefix.endswith((" ", "\t")) else found.prefix + " "
    lines = _lines(text)
    lines[found.index] = f"{prefix}{new_value}{suffix}{found.newline}"
    return "".join(lines)


def pin_compose_file(path: Path, service: str, version: str) -> bool:
    """Pin ``service`` to ``version`` in the compose file at ``path``; True if it changed.

    Nothing is written when the file already has that pin.
    """
    target = Path(path).resolve()  # through a symlink: replace the file, not the link
    original = target.read_bytes().decode("utf-8")
    updated = pin_compose_image(original, service, version)
    if updated == original:
        return False
    replace_file_atomically(target, updated.encode("utf-8"))
    return True


def replace_file_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` over ``path`` so a crash leaves either the old or the new file.

    The new file is written next to the old one, fsynced and renamed over it; mode (and owner,
    when we may) is kept.
    """
    target = Path(path).resolve()
    stat = target.stat()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, stat.st_mode & 0o7777)
        try:
            os.chown(tmp_name, stat.st_uid, stat.st_gid)
        except (PermissionError, AttributeError):
            pass
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------------------------
# Running docker compose
# --------------------------------------------------------------------------------------------


def compose_up(
    compose_file: Path,
    service: str,
    *,
    project_name: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 900.0,
) -> None:
    """``docker compose -f F up -d SERVICE``: (re)create the service from the pinned image.

    Compose recreates the container when the image changed, and pulls a missing image itself.
    """
    run_compose(
        compose_command(compose_file, "up", "-d", service, project_name=project_name),
        env=env,
        timeout=timeout,
    )


def compose_stop(
    compose_file: Path,
    service: str,
    *,
    project_name: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 300.0,
) -> None:
    """``docker compose -f F stop SERVICE``: stop the server, keep its container and volumes."""
    run_compose(
        compose_command(compose_file, "stop", service, project_name=project_name),
        env=env,
        timeout=timeout,
    )


def compose_service_state(
    compose_file: Path,
    service: str,
    *,
    project_name: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict:
    """``docker compose ps --format json --all SERVICE``: ``{"state": "running"|"exited"|
    "absent", "image": ...}`` of the service's container."""
    result = run_compose(
        compose_command(
            compose_file, "ps", "--format", "json", "--all", service, project_name=project_name
        ),
        env=env,
        timeout=60,
    )
    rows = []
    text = result.stdout.strip()
    if text.startswith("["):  # older Compose v2 prints one JSON array
        rows = json.loads(text)
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = [r for r in rows if r.get("Service", service) == service]
    if not rows:
        return {"state": "absent", "image": None}
    row = rows[0]
    return {"state": str(row.get("State", "")).lower(), "image": row.get("Image")}


def deploy_pinned_version(
    compose_file: Path,
    service: str,
    version: str,
    base_url: str,
    timeout: float = 180.0,
    *,
    project_name: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict:
    """Pin ``service`` to ``version``, ``up -d`` it and wait until it is healthy at that version.

    Returns ``{"changed": bool, "version": "0.16.2", "health": {...}}``. If ``up`` or the health
    wait fails, the file stays pinned to the new version: the calling flow decides whether to
    roll back (by deploying the old version again).
    """
    pinned = str(parse_server_version(version))
    changed = pin_compose_file(Path(compose_file), service, pinned)
    compose_up(Path(compose_file), service, project_name=project_name, env=env)
    health = wait_for_health(base_url, expected_version=pinned, timeout=timeout)
    return {"changed": changed, "version": pinned, "health": health}
