"""The one exception type for user mistakes: the CLI prints it as one line and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for (bad name, bad value, missing file).

    The message says what was wrong, the value received, and what to do.
    """
