"""One module per CLI subcommand; each has ``register(subparsers)`` that sets ``func``.

``func(args)`` returns an exit code (or None for 0) and raises :class:`alexnet.errors.UserError`
for anything the user can fix.
"""

COMMANDS = ("prepare", "train", "evaluate", "predict", "demo", "show", "experiment", "report", "export")
