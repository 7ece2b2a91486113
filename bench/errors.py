"""User-facing errors: one line that says what was wrong and what to do."""


class BenchError(Exception):
    """An error the user can act on. The CLI prints it as one line, no traceback."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name if it has none), cut at ``limit``:
    libraries raise multi-line messages, and our errors are one line."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
