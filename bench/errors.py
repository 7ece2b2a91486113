"""User-facing errors: one line that says what was wrong and what to do."""
from __future__ import annotations

import re

# noise that libraries put before or after the line that says what happened
_NOISE = re.compile(r"^\((raised as a result of|Background on this error)")


class BenchError(Exception):
    """An error the user can act on. The CLI prints it as one line, no traceback."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first informative line of an exception's message (its type name if it has none),
    shortened to ``limit`` at a sentence or word boundary: libraries raise multi-line
    messages, and our errors are one line that must not stop mid-word."""
    lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()]
    text = next((x for x in lines if not _NOISE.match(x)), lines[0] if lines else type(exc).__name__)
    return shorten(text, limit)


def shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = cut.rfind(". ")
    if end > limit // 3:  # whole sentences, if that keeps a useful share of the text
        return cut[:end + 1]
    return cut[:max(cut.rfind(" "), limit // 2)].rstrip(" ,;:") + " ..."


def root_cause(exc: BaseException, limit: int = 300) -> str:
    """What actually failed beneath wrappers: a database driver's own error where there is one
    (SQLAlchemy's ``orig``, e.g. "database or disk is full" rather than an autoflush notice),
    else the innermost exception in the chain that has a message."""
    seen, chain = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        orig = getattr(exc, "orig", None)
        if isinstance(orig, BaseException) and str(orig).strip():
            return first_line(orig, limit)
        exc = exc.__cause__ or exc.__context__
    for inner in reversed(chain):
        if str(inner).strip():
            return first_line(inner, limit)
    return type(chain[-1]).__name__ if chain else ""
