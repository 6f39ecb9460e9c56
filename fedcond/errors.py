"""fedcond's user-facing error type.

A ``FedcondError`` means the *user* can fix something (a flag, a path, a file); the CLI
prints its message on one line and exits non-zero without a traceback. Programming errors
keep raising their ordinary exceptions.
"""


class FedcondError(Exception):
    """An error the user can act on; its message says what is wrong and what to do."""
