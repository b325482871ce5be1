"""The version of the ``--json`` documents (README, "Scripting: --json").

A module of its own, without pydantic, so that ``letta-ops --help`` can name it without
loading the report models (:mod:`letta_ops.tasks.runs.report`).
"""

#: Raised when a key of a documented ``--json`` shape changes meaning or goes away; new keys
#: may appear without it.
SCHEMA_VERSION = 1
