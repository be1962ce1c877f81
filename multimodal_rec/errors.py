"""The one exception type for user mistakes: the CLI prints its message on one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (missing file, bad column, empty query...): message only, no traceback."""
