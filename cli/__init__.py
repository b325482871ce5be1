"""The ``letta-ops`` command line.

One module per area (:mod:`cli.runtime`, :mod:`cli.backups`, :mod:`cli.upgrade`,
:mod:`cli.restore`, :mod:`cli.history`, :mod:`cli.maintenance`, :mod:`cli.serve`,
:mod:`cli.demo`), each registering its sub-commands; :mod:`cli.main` builds the parser from
them and maps errors to exit codes through :mod:`cli.errors`. Area modules import only
:mod:`cli.output`, :mod:`cli.errors` and :mod:`cli.options`, never :mod:`cli.main`, and each
command imports what it runs when it runs: ``letta-ops --help`` loads no Prefect, SQLAlchemy or
boto3, and the read-only commands load Prefect only for saved blocks (``--server``).
"""
