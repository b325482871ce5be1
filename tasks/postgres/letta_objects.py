"""Which objects of a shared database are Letta's: what letta-ops dumps, drops and restores.

Why this module: Letta often shares its database. On Supabase its tables sit in ``public``
beside the operator's own tables, with schemas such as ``auth`` and ``storage`` beside it and
pgvector in ``extensions``; on a plain server an operator adds a table of their own next to
Letta's. A reset that dropped "every object the role owns in the schema" dropped those too
(a table made after the set, never held by it, was simply gone after a rollback), and a dump
of the whole database carried every other schema into every set. letta-ops touches only
Letta's objects, by this one rule, used by the backup, the reset in place, the restore, the
row counts and every plan:

* **Letta's schema** is ``public``, or ``LETTA_PG_SCHEMA`` (the Docker image's init script
  uses a schema named after the database). No other schema is ever dumped, dropped or
  restored.
* **Letta's tables** in it are ``alembic_version`` and the tables Letta's own migrations and
  models create (:data:`LETTA_TABLES`: every ``op.create_table`` and ``__tablename__`` of the
  Letta server's releases, up to 0.16.8, its last), the Letta Database block's
  ``extra_tables`` (``LETTA_OPS_EXTRA_TABLES``: tables an operator wants backed up and
  restored with Letta's), and, for a restore, the tables the set being restored holds.
  By *name*, because the names are what Letta's alembic owns: a table of such a name that
  were not Letta's would stop Letta's own migrations anyway. So after an upgrade the tables
  the new version created are Letta's and go on a rollback, while a table the operator made
  (``app_notes``) is not, whether or not a set ever held it.
* **Letta's sequences** are the ones its tables own (serial, identity) or use in a column
  default (``message_seq_id`` is free-standing), and ``message_seq_id`` itself; **Letta's
  types** are the ones its tables' columns use and the enums its migrations create
  (:data:`LETTA_TYPES`). Letta creates no views and no functions: those are the operator's.
* Objects an extension owns (pgvector's type and functions, in whatever schema pgvector was
  created) are never Letta's, and never touched.

Everything else in the database is *left alone*, and each plan names it (:func:`inventory`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

#: Every table a Letta server release creates, from ``op.create_table`` in its alembic
#: migrations and ``__tablename__`` in ``letta/orm`` (releases 0.11.7 to 0.16.8, the last one
#: of the server; older releases' tables are in 0.16.8's migration chain). Plus alembic's own.
LETTA_TABLES: frozenset[str] = frozenset(
    {
        "alembic_version",
        "agent_environment_variables",
        "agent_passages",
        "agent_source_mapping",
        "agents",
        "agents_runs",
        "agents_tags",
        "archival_passages",
        "archives",
        "archives_agents",
        "block",
        "block_history",
        "blocks_agents",
        "blocks_conversations",
        "blocks_tags",
        "conversation_messages",
        "conversations",
        "file_contents",
        "files",
        "files_agents",
        "groups",
        "groups_agents",
        "groups_blocks",
        "identities",
        "identities_agents",
        "identities_blocks",
        "job_messages",
        "job_usage_statistics",
        "jobs",
        "llm_batch_items",
        "llm_batch_job",
        "mcp_oauth",
        "mcp_server",
        "mcp_tools",
        "message_sequence",
        "messages",
        "organizations",
        "passage_tags",
        "passages",
        "prompts",
        "provider_models",
        "provider_trace_metadata",
        "provider_traces",
        "providers",
        "run_metrics",
        "runs",
        "sandbox_configs",
        "sandbox_environment_variables",
        "source_passages",
        "sources",
        "sources_agents",
        "step_metrics",
        "steps",
        "tokens",
        "tools",
        "tools_agents",
        "users",
    }
)

#: Enums Letta's migrations create by name (``sa.Enum(..., name=...)``, ``CREATE TYPE``).
LETTA_TYPES: frozenset[str] = frozenset(
    {"sandboxtype", "sandboxtype_old", "stepstatus", "stopreasontype", "vectordbprovider"}
)

#: Letta's free-standing sequence behind ``messages.sequence_id`` (not OWNED BY the column).
LETTA_SEQUENCES: frozenset[str] = frozenset({"message_seq_id"})


#: Objects of every non-system schema that no extension owns. Array types and tables' row
#: types go with their types and tables; ``relname`` is the bare name the rule compares.
_OBJECTS_SQL = """
WITH ns AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
      AND nspname NOT LIKE 'pg_temp_%' AND nspname NOT LIKE 'pg_toast_temp_%'
),
objects AS (
    SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'f' THEN 'foreign table'
                          WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                          ELSE 'sequence' END AS kind,
           ns.nspname AS schema, c.relname AS bare,
           format('%I.%I', ns.nspname, c.relname) AS name, c.relowner AS owner, c.oid,
           'pg_class'::regclass AS classid
    FROM pg_class c JOIN ns ON c.relnamespace = ns.oid
    WHERE c.relkind IN ('r','p','f','v','m','S') AND NOT c.relispartition
    UNION ALL
    SELECT CASE t.typtype WHEN 'd' THEN 'domain' ELSE 'type' END, ns.nspname, t.typname,
           format('%I.%I', ns.nspname, t.typname), t.typowner, t.oid, 'pg_type'::regclass
    FROM pg_type t JOIN ns ON t.typnamespace = ns.oid
    WHERE t.typtype IN ('c','d','e','r','m')
      AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
      AND NOT (t.typcategory = 'A')
    UNION ALL
    SELECT 'routine', ns.nspname, p.proname, p.oid::regprocedure::text, p.proowner, p.oid,
           'pg_proc'::regclass
    FROM pg_proc p JOIN ns ON p.pronamespace = ns.oid
)
SELECT kind, schema, bare, name, pg_get_userbyid(owner) AS owner,
       pg_has_role(current_user, owner, 'USAGE') AS owned, oid
FROM objects o
WHERE NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = o.classid AND d.objid = o.oid AND d.deptype = 'e')
ORDER BY schema, kind, name
"""

#: Sequences the given tables own (serial: 'a', identity: 'i') or name in a column default.
_TABLE_SEQUENCES_SQL = """
SELECT d.objid FROM pg_depend d
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = ANY(:oids) AND d.deptype IN ('a', 'i')
UNION
SELECT d.refobjid FROM pg_attrdef ad
JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
                AND d.refclassid = 'pg_class'::regclass
WHERE ad.adrelid = ANY(:oids)
"""

#: Types the given tables' columns use (and, for arrays, their element types).
_TABLE_TYPES_SQL = """
SELECT a.atttypid FROM pg_attribute a
WHERE a.attrelid = ANY(:oids) AND a.attnum > 0 AND NOT a.attisdropped
UNION
SELECT t.typelem FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = ANY(:oids) AND a.attnum > 0 AND NOT a.attisdropped AND t.typelem <> 0
"""

#: Constraints on tables that are not Letta's: a ``DROP TABLE ... CASCADE`` of a Letta table
#: would silently take an operator's foreign key to it, so the reset checks they survive.
_CONSTRAINTS_SQL = """
SELECT format('%I.%I', n.nspname, c.relname) || ' constraint ' || quote_ident(k.conname)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE k.conrelid = ANY(:oids)
"""


@dataclass(frozen=True)
class SchemaObject:
    """One object of the database, as a plan names it (``table public.app_notes``)."""

    kind: str
    name: str
    owner: str = ""
    owned: bool = True

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class DatabaseInventory:
    """The database's objects split by the rule: Letta's (in Letta's schema) and the rest."""

    schema: str
    letta: tuple[SchemaObject, ...]
    #: Objects of Letta's schema that are not Letta's.
    left_alone_in_schema: tuple[SchemaObject, ...]
    #: Other schemas holding objects no extension owns, with how many (``auth``: 3).
    other_schemas: dict[str, int] = field(default_factory=dict)
    #: Constraints on the left-alone tables (a reset must not take them by cascade).
    left_alone_constraints: tuple[str, ...] = ()

    @property
    def shared(self) -> bool:
        """Whether anything but Letta's objects (and extensions) lives in the database."""
        return bool(self.left_alone_in_schema or self.other_schemas)

    def left_alone(self) -> list[str]:
        """Every object letta-ops leaves alone, as a plan lists them: the objects of Letta's
        schema one by one, other schemas as a whole."""
        return [str(o) for o in self.left_alone_in_schema] + [
            f"schema {name} ({count} objects)" for name, count in self.other_schemas.items()
        ]

    def excluded_relations(self) -> list[str]:
        """Qualified names of the left-alone relations and sequences of Letta's schema: what
        pg_dump must leave out (``--exclude-table``); functions and types cannot be."""
        relations = ("table", "foreign table", "view", "materialized view", "sequence")
        return [o.name for o in self.left_alone_in_schema if o.kind in relations]


def inventory(conn: Connection, schema: str, also_tables: Iterable[str] = ()) -> DatabaseInventory:
    """Read the database's objects and split them by the rule of this module.

    ``also_tables``: more table names to count as Letta's (the block's ``extra_tables``, and
    for a restore the tables of the set being restored).
    """
    rows = conn.execute(sa.text(_OBJECTS_SQL)).mappings().all()
    names = LETTA_TABLES | set(also_tables)
    mine = [r for r in rows if r["schema"] == schema]
    tables = [r for r in mine if r["kind"] == "table" and r["bare"] in names]
    table_oids = [int(r["oid"]) for r in tables]
    sequences: set[int] = set()
    types: set[int] = set()
    if table_oids:
        params = {"oids": table_oids}
        sequences = {int(o) for (o,) in conn.execute(sa.text(_TABLE_SEQUENCES_SQL), params)}
        types = {int(o) for (o,) in conn.execute(sa.text(_TABLE_TYPES_SQL), params)}

    def is_letta(row) -> bool:
        kind, bare, oid = row["kind"], row["bare"], int(row["oid"])
        if kind == "table":
            return bare in names
        if kind == "sequence":
            return oid in sequences or bare in LETTA_SEQUENCES
        if kind in ("type", "domain"):
            return oid in types or bare in LETTA_TYPES
        return False  # views, functions: Letta creates none

    def obj(row) -> SchemaObject:
        return SchemaObject(row["kind"], row["name"], row["owner"], bool(row["owned"]))

    letta = [obj(r) for r in mine if is_letta(r)]
    left = [r for r in mine if not is_letta(r)]
    others: dict[str, int] = {}
    for row in rows:
        if row["schema"] != schema:
            others[row["schema"]] = others.get(row["schema"], 0) + 1
    left_tables = [int(r["oid"]) for r in left if r["kind"] == "table"]
    constraints: tuple[str, ...] = ()
    if left_tables:
        constraints = tuple(
            sorted(c for (c,) in conn.execute(sa.text(_CONSTRAINTS_SQL), {"oids": left_tables}))
        )
    return DatabaseInventory(
        schema=schema,
        letta=tuple(letta),
        left_alone_in_schema=tuple(obj(r) for r in left),
        other_schemas=others,
        left_alone_constraints=constraints,
    )
