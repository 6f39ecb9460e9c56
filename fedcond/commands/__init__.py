"""One module per CLI command; each defines ``command`` (a typer-annotated function).

``fedcond.cli`` registers every module listed in ``COMMANDS`` that exists, so a new
command is a new file here plus one name in the list.
"""

COMMANDS = ("distill", "experts", "evaluate", "relabel", "info", "audit", "federate", "continual", "report")
