"""One module per CLI command; each defines ``command`` (a typer-annotated function).

``fedcond.cli`` registers every module listed in ``COMMANDS``, so a new command is a new
file here plus one name in the list (a listed name without its file fails at import).
"""

COMMANDS = ("distill", "experts", "evaluate", "relabel", "info", "audit", "federate", "continual")
