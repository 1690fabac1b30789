"""Errors a user can cause. The CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Something the user can fix: the message says what is wrong and what to do."""
