"""The exceptions the CLI reports on one line (message only, no traceback, exit code 2).

:class:`UserError` is the user's mistake, fixed by changing the input; :class:`InfrastructureError` is the machine's
or a service's failure, fixed by retrying or repairing the environment. Anything else (a bug, the OSError of a
failing disk) is neither: it propagates with its traceback.
"""


class UserError(Exception):
    """Bad input from the user (missing file, bad column, empty query...): message only, no traceback."""


class InfrastructureError(Exception):
    """The environment failed, not the input: a subprocess or worker died, a server did not come up in time.

    Reported like a :class:`UserError` (one line, exit code 2), but not one: library callers catching ``UserError``
    for bad input do not swallow it, and its message should say what to retry or check.
    """
