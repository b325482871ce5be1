"""A folder of agent files: what ``export-agents`` writes and what ``import-agents`` reads.

Why a folder of its own, beside backup sets: operators arrive holding agent files they made by
hand before an upgrade (``~/letta-backup-YYYYMMDD/agent-<id>.json``, straight from Letta's
export endpoint), and want to move agents between servers that share no backup store. The
folder is plain files anyone can read: one agent file per agent, named by the agent's id (ids
are safe file names, agent names hold ``/``), and ``manifest.json`` with each agent's name, the
counts its file carries and its sha256, written last.

Reading is strict before anything is imported: every file must parse as an agent file, carry
its agent id in its name, and (with a manifest) match its recorded sha256; a folder that fails
any of these is refused in one sentence, so an import never starts on half a folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..errors import Refused
from .agent_file import AgentFileError, AgentFileSummary, summarize_agent_file
from .agent_names import NameRule, sanitize_agent_name, unique_name

MANIFEST_NAME = "manifest.json"
FOLDER_FORMAT = 1
#: A Letta agent id: ``agent-`` and a UUID. Found in a hand-made file's name.
AGENT_ID = re.compile(r"agent-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
AGENT_FILE_SUFFIXES = (".af", ".json")
#: Recorded on each imported agent (its metadata), so a later import knows it is there.
SOURCE_ID_KEY = "letta_ops_source_id"


class AgentFolderRefused(Refused):
    """The folder cannot be written or read as asked; nothing was written or imported."""


@dataclass(frozen=True)
class FolderAgent:
    """One agent file of a folder, as read and summarized."""

    agent_id: str  # its id on the server that exported it
    file: str  # the file's name in the folder
    name: str
    blocks: dict[str, str]  # label -> value
    messages: int
    multi_entity: bool  # False: the single-agent format of Letta <= 0.11.6
    sha256: str

    @classmethod
    def of(cls, agent_id: str, file: str, summary: AgentFileSummary, sha256: str) -> FolderAgent:
        """The folder's entry for a file whose contents ``summary`` describes."""
        return cls(
            agent_id=agent_id,
            file=file,
            name=summary.name,
            blocks=summary.blocks,
            messages=summary.messages,
            multi_entity=summary.multi_entity,
            sha256=sha256,
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def require_new_folder(folder: Path) -> None:
    """An export writes into a folder that is missing or empty: it never overwrites files."""
    if folder.exists() and not folder.is_dir():
        raise AgentFolderRefused(f"{folder} is a file, not a folder; name a new folder.")
    if folder.is_dir() and any(folder.iterdir()):
        raise AgentFolderRefused(
            f"{folder} is not empty; export into a new folder (an export never overwrites files)."
        )


def write_agent_file(folder: Path, agent_id: str, data: bytes) -> FolderAgent:
    """Store one exported agent file as ``<id>.af`` and summarize what it carries."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", agent_id):
        raise ValueError(f"Agent id {agent_id!r} is not a safe file name.")
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{agent_id}.af"
    (folder / name).write_bytes(data)
    summary = summarize_agent_file(data)
    return FolderAgent.of(agent_id, name, summary, _sha256(data))


def manifest_entry(agent: FolderAgent) -> dict:
    """One agent's line of ``manifest.json``: what its file is and carries."""
    return {
        "id": agent.agent_id,
        "name": agent.name,
        "file": agent.file,
        "messages": agent.messages,
        "blocks": len(agent.blocks),
        "sha256": agent.sha256,
    }


def write_manifest(
    folder: Path, server: str, letta_version: str, agents: list[dict], failed: list[dict]
) -> Path:
    """``manifest.json`` (``agents``: :func:`manifest_entry` lines), written last: the folder
    is complete when it exists."""
    document = {
        "format": FOLDER_FORMAT,
        "server": server,
        "letta_version": letta_version,
        "exported_at": datetime.now(UTC).isoformat(),
        "agents": agents,
        "failed": failed,
    }
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path


def _summarize(folder: Path, name: str, agent_id: str, sha256: str | None) -> FolderAgent:
    path = folder / name
    if not path.is_file():
        raise AgentFolderRefused(f"{path} is listed in {MANIFEST_NAME} but missing.")
    data = path.read_bytes()
    digest = _sha256(data)
    if sha256 is not None and digest != sha256:
        raise AgentFolderRefused(
            f"{path} differs from the file {MANIFEST_NAME} recorded (sha256); it was changed "
            "after the export."
        )
    try:
        summary = summarize_agent_file(data)
    except AgentFileError as exc:
        raise AgentFolderRefused(f"{path} is not an agent file: {exc}") from None
    return FolderAgent.of(agent_id, name, summary, digest)


def read_folder(folder: Path) -> list[FolderAgent]:
    """Every agent file of ``folder``: those its manifest lists, or (a folder made by hand
    with Letta's export endpoint) every ``*.json``/``*.af`` file, its id taken from its name."""
    if not folder.is_dir():
        raise AgentFolderRefused(f"{folder} is not a folder of agent files.")
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        try:
            listed = json.loads(manifest.read_text())["agents"]
            entries = [(a["file"], a["id"], a["sha256"]) for a in listed]
        except (ValueError, KeyError, TypeError):
            raise AgentFolderRefused(
                f"{manifest} is not a letta-ops agent folder manifest."
            ) from None
        for file, _, _ in entries:
            if Path(file).name != file:
                raise AgentFolderRefused(f"{manifest} names a file outside the folder: {file!r}.")
        agents = [_summarize(folder, file, agent_id, sha) for file, agent_id, sha in entries]
    else:
        agents = []
        for path in sorted(folder.iterdir()):
            if path.suffix not in AGENT_FILE_SUFFIXES or not path.is_file():
                continue
            found = AGENT_ID.search(path.name)
            if found is None:
                raise AgentFolderRefused(
                    f"{path.name} in {folder} carries no agent id in its name (agent-<uuid>); "
                    "name each file by the id of the agent it holds, as Letta's exports are."
                )
            agents.append(_summarize(folder, path.name, found.group(0), None))
    if not agents:
        raise AgentFolderRefused(f"{folder} holds no agent files (*.af, *.json).")
    ids = [a.agent_id for a in agents]
    if len(set(ids)) != len(ids):
        raise AgentFolderRefused(f"{folder} holds two files of the same agent id; keep one.")
    return agents


@dataclass(frozen=True)
class ImportStep:
    """One agent file: imported under ``import_as``, or skipped and why."""

    agent_id: str
    file: str
    name_in_file: str
    import_as: str
    skip: str | None  # None: imported

    @property
    def renamed(self) -> bool:
        return self.import_as != self.name_in_file

    def to_dict(self) -> dict:
        return {**asdict(self), "renamed": self.renamed}


def plan_import(agents: list[FolderAgent], live: list[dict], rule: NameRule) -> list[ImportStep]:
    """Which files to import and under which names.

    An agent already on the server by id (the folder came from this server), or imported
    there before by letta-ops (its metadata records the id), is skipped. Every other agent
    gets its name as the target's ``rule`` accepts it, unique among the live agents and this
    import's others (``-2``, ``-3``...): two agents nobody can tell apart are never made.
    """
    present = {a["id"]: a["id"] for a in live}
    for agent in live:
        source = (agent.get("metadata") or {}).get(SOURCE_ID_KEY)
        if source:
            present.setdefault(source, agent["id"])
    taken = {a["name"] for a in live}
    steps = []
    for agent in agents:
        if agent.agent_id in present:
            holder = present[agent.agent_id]
            steps.append(
                ImportStep(
                    agent_id=agent.agent_id,
                    file=agent.file,
                    name_in_file=agent.name,
                    import_as=agent.name,
                    skip="exists by id"
                    if holder == agent.agent_id
                    else f"imported before as {holder}",
                )
            )
            continue
        name = unique_name(sanitize_agent_name(agent.name, rule), taken)
        taken.add(name)
        steps.append(
            ImportStep(
                agent_id=agent.agent_id,
                file=agent.file,
                name_in_file=agent.name,
                import_as=name,
                skip=None,
            )
        )
    return steps


def require_importable(agents: list[FolderAgent], target_version: str) -> None:
    """Letta >= 0.12 refuses the single-agent format of <= 0.11.6: say so before importing."""
    from packaging.version import Version

    if Version(target_version) < Version("0.12.0"):
        return
    old = [a.file for a in agents if not a.multi_entity]
    if old:
        raise AgentFolderRefused(
            f"{len(old)} file(s) ({', '.join(old[:3])}) are in the single-agent format of "
            f"Letta <= 0.11.6, which Letta {target_version} cannot import; import them into a "
            "0.11.x server and upgrade it with 'letta-ops upgrade'."
        )
