"""Errors that reach the user as a clear message and exit code, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unmet precondition. ``str(err)`` is the whole message the user sees."""

    exit_code = 1


def validation_problems(err, unknown: str = "unknown key") -> list[tuple[tuple, str]]:
    """Each problem of a pydantic ``ValidationError`` as (location, message): pydantic's message
    without its "Value error, " prefix, or ``unknown`` for a key the model does not have."""
    return [(tuple(e["loc"]), unknown if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, "))
            for e in err.errors(include_url=False)]
