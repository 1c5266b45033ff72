"""Errors that reach the user as a clear message and exit code, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unmet precondition. ``str(err)`` is the whole message the user sees."""

    exit_code = 1
