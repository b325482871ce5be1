"""The ``letta-ops`` command line.

One module per area (``runtime``, ``backups``, ``upgrade``, ``restore``, ``history``,
``maintenance``, ``serve``, ``demo``, ...), each registering its sub-commands;
:mod:`letta_ops.cli.main` builds the parser from them and maps errors to exit codes through
:mod:`letta_ops.cli.errors`. Area modules import only :mod:`letta_ops.cli.output`,
:mod:`letta_ops.cli.errors` and :mod:`letta_ops.cli.options`, never :mod:`letta_ops.cli.main`,
and each command imports what it runs when it runs: ``letta-ops --help`` loads no Prefect,
SQLAlchemy or boto3, and the read-only commands load Prefect only for saved blocks
(``--server``).
"""
