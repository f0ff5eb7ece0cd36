"""The one exception users see: bad input, reported as one line and exit status 2."""


class UsageError(Exception):
    """Bad input from the user: the message names the problem and the fix.

    The CLI prints it as one line (no traceback) and exits with status 2.
    Library callers get an ordinary exception they can catch.
    """
