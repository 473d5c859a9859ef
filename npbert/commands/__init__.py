"""One module per `npbert` sub-command; see npbert/cli.py (which imports these; they never import it)."""


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2 (bad input) or 1 (anything else)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status
