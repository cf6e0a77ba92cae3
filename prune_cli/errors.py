"""The two ways a run ends badly, each with its own exit code."""


class UsageError(Exception):
    """Bad input from the user: one line, exit code 2."""


class RunFailed(Exception):
    """The run started but could not finish (e.g. a non-finite loss): exit code 1."""
