"""The one error type every user-caused failure derives from.

A :class:`UserError` is something the user caused and can fix: a malformed spec, config or record, a
refused path, a wrong flag value, a dataset that fails its checks. The ``tumorforge`` front door is
the one place that catches it: it prints ``tumorforge <command>: <message>`` on one line of stderr,
no traceback, and exits with the error's ``exit_code`` (2 unless a subclass says otherwise). Every
other exception is a bug in tumorforge (or a fault of the machine) and keeps its traceback.

Each stage keeps its own named subclasses (``ManifestError``, ``SpecError``, ...) so callers can
catch what they expect; they also derive from ``ValueError`` or ``RuntimeError`` where existing
callers catch those.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can cause and fix; the message names the file, scan or sample, what was
    expected and what was found."""

    exit_code = 2


def one_line(exc: BaseException, limit: int = 2000) -> str:
    """``exc``'s message on one line (its non-empty lines joined by "; ", at most ``limit``
    characters), or its type's name when the message is empty (``str(exc).splitlines()[0]``
    fails on an empty message)."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if not text:
        return type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
