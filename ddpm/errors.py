"""The one exception type for mistakes in the user's input."""


class UserError(Exception):
    """A bad value, file or option: the CLI prints the message as it is and exits with status 2."""
