"""Find and remove the folders (sources) that nothing uses: orphans, duplicates and phantoms.

Why: sources and folders are one entity in Letta (ids ``source-...``; ``/v1/folders`` and the
deprecated ``/v1/sources`` list the same rows). Servers collect three kinds of debris:

* *orphans*: folders attached to no agent;
* *duplicates*: copies of one folder under a suffixed name: ``name_2`` from scripts that retried
  after a 409, ``name_1a2b3c4d`` from agent-file imports (an imported source whose name exists
  gets a random 8-hex suffix), ``name_copy``;
* *phantoms*: rows the list shows but the API cannot act on: soft-deleted rows
  (``is_deleted``: listed, yet 404 on delete) and rows whose id is not ``source-<uuid4>``
  (422 on every call by id). Only SQL can remove those (see
  :mod:`letta_ops.tasks.letta.source_phantom_rows`).

The rules (:func:`plan_cleanup`) are pure. A folder attached to an agent is never deleted,
whatever its name; a suffixed folder is called a duplicate only when its description and
instructions equal the folder it copies, so ``report_2`` that is really a different report
stays an orphan at worst and is listed as such.

Also here: :func:`get_or_create_folder`, the create that treats 409 as "it already exists"
and returns the real existing folder (found across every page), never a placeholder; the
runbooks' version returned a fake id and the next call crashed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

from .api import LettaAPIError, LettaClient
from .endpoint import LettaEndpoint

#: Suffixes that copies of a folder get: ``_2`` (scripts), ``_1a2b3c4d`` (agent-file import),
#: ``_copy`` / ``_copy_2``.
_COPY_SUFFIX = re.compile(r"^(?P<base>.+?)(?:_\d{1,3}|_[0-9a-f]{8}|_copy(?:_\d{1,3})?)$")

#: Answers that mean "this id cannot be acted on" rather than a transient failure.
PHANTOM_STATUSES = frozenset({400, 404, 422})

FolderCategory = Literal["orphan", "duplicate", "phantom"]


class FolderNotFound(LookupError):
    """The server said a folder exists (409) but no page of the list holds it."""


@dataclass
class FolderState:
    """One folder as the API shows it, with the agents it is attached to.

    ``agents`` is None when the server could not answer for this folder (a phantom), and
    ``phantom`` then says why.
    """

    id: str
    name: str
    created_at: str | None = None
    description: str | None = None
    instructions: str | None = None
    agents: list[str] | None = None
    phantom: str | None = None


@dataclass
class CleanupItem:
    """One folder the cleanup acts on (or, in a plan, would act on)."""

    id: str
    name: str
    category: FolderCategory
    reason: str
    duplicate_of: str | None = None
    outcome: str = "planned"


@dataclass
class CleanupPlan:
    """What to remove, and the folders kept on purpose (with why)."""

    remove: list[CleanupItem] = field(default_factory=list)
    kept: list[dict] = field(default_factory=list)
    folders_total: int = 0

    def of(self, category: FolderCategory) -> list[CleanupItem]:
        return [i for i in self.remove if i.category == category]

    def to_dict(self) -> dict:
        return {
            "folders_total": self.folders_total,
            "orphans": len(self.of("orphan")),
            "duplicates": len(self.of("duplicate")),
            "phantoms": len(self.of("phantom")),
            "remove": [asdict(i) for i in self.remove],
            "kept": self.kept,
        }


# --------------------------------------------------------------------------------------------
# Pure rules
# --------------------------------------------------------------------------------------------


def base_name(name: str) -> str:
    """``kb_2``, ``kb_1a2b3c4d`` and ``kb_copy`` -> ``kb``; any other name is its own base."""
    match = _COPY_SUFFIX.match(name)
    return match.group("base") if match else name


def _same_content(a: FolderState, b: FolderState) -> bool:
    def content(f: FolderState) -> tuple[str, str]:
        return (f.description or "", f.instructions or "")

    return content(a) == content(b)


def find_duplicates(folders: Iterable[FolderState]) -> dict[str, FolderState]:
    """``{duplicate folder id: the folder it copies}`` among live (non-phantom) folders.

    In each group of folders sharing a base name, the original is the folder named exactly
    the base, else the oldest; a folder attached to agents is never called a duplicate.
    """
    groups: dict[str, list[FolderState]] = defaultdict(list)
    for folder in folders:
        if folder.phantom is None:
            groups[base_name(folder.name)].append(folder)
    duplicates: dict[str, FolderState] = {}
    for base, members in groups.items():
        if len(members) < 2:
            continue
        ordered = sorted(members, key=lambda f: (f.name != base, f.created_at or "", f.id))
        original = ordered[0]
        for folder in ordered[1:]:
            if folder.name == base or folder.agents:
                continue
            if _same_content(folder, original):
                duplicates[folder.id] = original
    return duplicates


def plan_cleanup(folders: Iterable[FolderState]) -> CleanupPlan:
    """Phantoms, then duplicates, then orphans; folders with agents are only ever kept."""
    folders = list(folders)
    plan = CleanupPlan(folders_total=len(folders))
    duplicates = find_duplicates(folders)
    for folder in sorted(folders, key=lambda f: (f.name, f.id)):
        if folder.phantom is not None:
            plan.remove.append(
                CleanupItem(folder.id, folder.name, "phantom", folder.phantom, outcome="planned")
            )
        elif folder.agents:
            if base_name(folder.name) != folder.name:
                plan.kept.append(
                    {
                        "id": folder.id,
                        "name": folder.name,
                        "reason": f"looks like a copy but is attached to {len(folder.agents)} "
                        "agent(s)",
                    }
                )
        elif folder.id in duplicates:
            original = duplicates[folder.id]
            plan.remove.append(
                CleanupItem(
                    folder.id,
                    folder.name,
                    "duplicate",
                    f"copy of {original.name!r} ({original.id}), attached to no agent",
                    duplicate_of=original.id,
                )
            )
        else:
            plan.remove.append(
                CleanupItem(folder.id, folder.name, "orphan", "attached to no agent")
            )
    return plan


# --------------------------------------------------------------------------------------------
# Against the Letta API
# --------------------------------------------------------------------------------------------


def survey_folders(client: LettaClient) -> list[FolderState]:
    """Every folder (all pages) with the agents it is attached to (all pages).

    A folder whose agents the server cannot list (404/422/400 by id) is a phantom: the same
    answer a delete would get, found without deleting anything.
    """
    states = []
    for folder in client.list_folders():
        state = FolderState(
            id=folder["id"],
            name=folder.get("name") or "",
            created_at=folder.get("created_at"),
            description=folder.get("description"),
            instructions=folder.get("instructions"),
        )
        try:
            state.agents = client.list_folder_agents(folder["id"])
        except LettaAPIError as exc:
            if exc.status not in PHANTOM_STATUSES:
                raise
            state.phantom = f"listed, but the API answers {exc.status} for its id" + (
                " (not a source-<uuid4> id)" if exc.status in (400, 422) else ""
            )
        states.append(state)
    return states


def delete_through_api(
    client: LettaClient,
    items: list[CleanupItem],
    on_done: Callable[[CleanupItem], None] | None = None,
) -> None:
    """Delete orphans and duplicates; mark each item with what happened.

    Attachment is re-checked just before each delete, so a folder an operator attached since
    the survey is kept. A delete answered 404/422 turns the item into a phantom.
    """
    for item in items:
        if item.category == "phantom":
            continue
        try:
            agents = client.list_folder_agents(item.id)
            if agents:
                item.outcome = f"kept: attached to {len(agents)} agent(s) since the survey"
            else:
                client.delete_folder(item.id)
                item.outcome = "deleted"
        except LettaAPIError as exc:
            if exc.status not in PHANTOM_STATUSES:
                item.outcome = f"error: {exc}"
            elif _gone(client, item.id):
                item.outcome = "deleted"  # a retried delete whose first attempt went through
            else:
                item.category = "phantom"
                item.reason = f"listed, but delete answered {exc.status}"
                item.outcome = "needs --sql: the API cannot delete it"
        if on_done is not None:
            on_done(item)


def _gone(client: LettaClient, folder_id: str) -> bool:
    return all(f["id"] != folder_id for f in client.list_folders())


def get_or_create_folder(client: LettaClient, body: dict) -> tuple[dict, bool]:
    """Create the folder ``body`` describes, or return the existing one of that name.

    Returns ``(folder, created)``. A 409 (the name is unique per organization) means it
    exists: it is looked up by exact name across every page of the list. If no page holds it
    (a phantom with that name), :class:`FolderNotFound` says so rather than returning a
    placeholder the next call would crash on.
    """
    name = body["name"]
    try:
        return client.create_folder(body), True
    except LettaAPIError as exc:
        if exc.status != 409:
            raise
    for folder in client.list_folders():
        if folder.get("name") == name:
            return folder, False
    raise FolderNotFound(
        f"The server refused to create folder {name!r} because it exists (409), but no page "
        "of the folder list holds it; it is probably a phantom row: run "
        "'letta-ops cleanup-sources --sql'."
    )


# --------------------------------------------------------------------------------------------
# Prefect tasks (thin wrappers)
# --------------------------------------------------------------------------------------------


@task(name="survey-folders", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def survey_folders_task(server: LettaEndpoint) -> list[FolderState]:
    with LettaClient(server) as client:
        return survey_folders(client)


@task(name="delete-folders-through-api", cache_policy=NO_CACHE)
def delete_through_api_task(server: LettaEndpoint, items: list[CleanupItem]) -> list[CleanupItem]:
    with LettaClient(server) as client:
        delete_through_api(client, items)
    return items
