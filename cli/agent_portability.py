"""``letta-ops export-agents DIR`` and ``letta-ops import-agents DIR``: agents between servers
that share no backup store, or from a folder of agent files an operator made by hand.

An export writes only into a new or empty folder; an import refuses the whole folder if any
file is unreadable or changed, skips agents already there, and says so (``--dry-run`` shows the
plan). A failed export of some agents, or an import that does not match its files, exits 1.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..tasks.errors import EXIT_FAILED, EXIT_OK
from .output import emit, render_table

if TYPE_CHECKING:  # the models load with the flows, never for --help
    from ..flows.export_agents import AgentExportReport
    from ..flows.import_agents import AgentImportReport


def render_export(report: AgentExportReport) -> str:
    rows = [row.model_dump(mode="json") for row in report.agents]
    head = (
        f"plan: {len(rows)} agent(s) of {report.server} (Letta {report.letta_version}); "
        "nothing written (drop --dry-run)"
        if report.dry_run
        else f"exported {report.exported} of {len(rows)} agent(s) of {report.server} "
        f"(Letta {report.letta_version}) to {report.folder}; manifest {report.manifest}"
    )
    table = render_table(
        rows, ["name", "agent_id", "file", "messages_in_file", "blocks_in_file", "error"]
    )
    return f"{table}\n{head}\nnote: {report.note}"


def cmd_export_agents(args: argparse.Namespace) -> int:
    from ..flows.export_agents import export_agents

    report = export_agents(args.folder, server=args.server, dry_run=args.dry_run)
    emit(report, args.json, render=render_export)
    return EXIT_FAILED if report.failed and not report.dry_run else EXIT_OK


def render_import(report: AgentImportReport) -> str:
    rows = [{**row.model_dump(mode="json"), "skipped": row.skipped or ""} for row in report.agents]
    table = render_table(
        rows,
        ["name_in_file", "imported_as", "new_id", "skipped", "blocks", "messages_imported"],
    )
    head = (
        "plan (nothing imported; drop --dry-run)"
        if report.dry_run
        else f"imported {report.imported}, skipped {report.skipped}, renamed {report.renamed}"
    )
    return f"{table}\n{head} into {report.server} (Letta {report.letta_version})"


def cmd_import_agents(args: argparse.Namespace) -> int:
    from ..flows.import_agents import import_agents

    report = import_agents(args.folder, server=args.server, dry_run=args.dry_run)
    emit(report, args.json, render=render_import)
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``export-agents`` and ``import-agents``."""
    p = sub.add_parser(
        "export-agents",
        parents=[common],
        help="export every agent to a folder: one agent file per agent, and a manifest",
        description="Export every agent of the server into DIR (new or empty), one agent file "
        "per agent named by its id, then manifest.json with names, the messages and blocks "
        "each file carries and sha256s. An agent the server cannot export is listed with the "
        "server's error (exit 1); the others are exported.",
    )
    p.add_argument("folder", metavar="DIR", help="a new or empty folder")
    p.add_argument("--dry-run", action="store_true", help="list the agents; write nothing")
    p.set_defaults(func=cmd_export_agents)

    p = sub.add_parser(
        "import-agents",
        parents=[common],
        help="import a folder of agent files, each agent once",
        description="Import the agent files of DIR (written by export-agents, or by Letta's "
        "export endpoint and named by agent id) into the running server. Agents already there "
        "by id, or imported before, are skipped; names the server refuses are changed and "
        "recorded; each agent's blocks and messages are checked against its file.",
    )
    p.add_argument("folder", metavar="DIR", help="a folder of agent files")
    p.add_argument("--dry-run", action="store_true", help="show the plan; import nothing")
    p.set_defaults(func=cmd_import_agents)
