"""The one exception family users see: a clear sentence, no traceback, exit code 2."""


class UserError(Exception):
    """Bad input or a request that cannot be met; the message says what and how to fix it."""

