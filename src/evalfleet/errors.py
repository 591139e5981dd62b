"""Errors shown to users without a traceback."""


class UserError(Exception):
    """A problem with the user's input (config, files, paths); printed as a message, not a traceback."""
