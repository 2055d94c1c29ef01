"""One exception type for mistakes the user can fix; entry points print its message without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, config or files, with a message that says what to do."""
