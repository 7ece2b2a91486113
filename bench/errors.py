"""User-facing errors: one line that says what was wrong and what to do."""


class BenchError(Exception):
    """An error the user can act on. The CLI prints it as one line, no traceback."""
