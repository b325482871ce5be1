"""The pure rules of folder cleanup: base names, duplicates, orphans, phantoms."""

from __future__ import annotations

import pytest

from letta_ops.tasks.letta.source_cleanup import (
    FolderState,
    base_name,
    find_duplicates,
    plan_cleanup,
)
from letta_ops.tasks.letta.source_phantom_rows import PhantomRow


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("kb", "kb"),
        ("kb_2", "kb"),
        ("kb_17", "kb"),
        ("kb_1a2b3c4d", "kb"),  # agent-file import suffix: 8 hex
        ("kb_copy", "kb"),
        ("kb_copy_2", "kb"),
        ("report_2024", "report_2024"),  # four digits: a name, not a copy counter
        ("notes_ABCDEF12", "notes_ABCDEF12"),  # upper case is not the import suffix
        ("my_docs", "my_docs"),
        ("_2", "_2"),
    ],
)
def test_base_name(name, base):
    assert base_name(name) == base


def folder(fid, name, agents=(), created="2026-01-01", description="d", phantom=None):
    return FolderState(
        id=fid,
        name=name,
        created_at=created,
        description=description,
        agents=None if phantom else list(agents),
        phantom=phantom,
    )


def test_duplicates_are_unattached_copies_with_the_same_content():
    folders = [
        folder("s1", "kb", agents=["a1"], created="2026-01-02"),
        folder("s2", "kb_2", created="2026-01-01"),  # older, but the exact name is the original
        folder("s3", "kb_1a2b3c4d"),
        folder("s4", "kb_copy", agents=["a2"]),  # attached: never a duplicate
        folder("s5", "kb_3", description="something else"),  # different content
    ]
    duplicates = find_duplicates(folders)
    assert set(duplicates) == {"s2", "s3"}
    assert {d.id for d in duplicates.values()} == {"s1"}


def test_without_the_exact_name_the_oldest_is_the_original():
    folders = [
        folder("s1", "kb_2", created="2026-01-02"),
        folder("s2", "kb_3", created="2026-01-01"),
    ]
    assert set(find_duplicates(folders)) == {"s1"}


def test_plan_never_removes_a_folder_with_agents():
    folders = [
        folder("s1", "kb", agents=["a1"]),
        folder("s2", "kb_2"),
        folder("s3", "scratch"),
        folder("s4", "handbook_2", agents=["a2"]),
        folder("s5", "ghost", phantom="listed, but the API answers 404 for its id"),
    ]
    plan = plan_cleanup(folders)
    assert {(i.id, i.category) for i in plan.remove} == {
        ("s2", "duplicate"),
        ("s3", "orphan"),
        ("s5", "phantom"),
    }
    assert [k["id"] for k in plan.kept] == ["s4"]
    assert plan.to_dict()["duplicates"] == 1 and plan.folders_total == 5
    assert plan.of("duplicate")[0].duplicate_of == "s1"


def test_phantom_rows_are_removable_only_when_the_database_agrees():
    good_id = "source-12345678-1234-4234-8234-123456789012"
    soft_deleted = PhantomRow(good_id, "ghost", True, True, True, 0)
    bad_id = PhantomRow("source-x", "ghost-v1", True, False, False, 0)
    live = PhantomRow(good_id, "kb", True, False, True, 0)
    attached = PhantomRow("source-x", "old", True, False, False, 2)
    gone = PhantomRow(good_id, None, False, False, True, 0)
    assert soft_deleted.removable and bad_id.removable
    assert not live.removable and "not a phantom" in live.why_not
    assert not attached.removable and "2 live agent" in attached.why_not
    assert not gone.removable and "already gone" in gone.why_not
