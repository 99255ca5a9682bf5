"""The one exception type a user sees without a traceback."""


class UserError(Exception):
    """Bad input or a state the user can fix. Entry points print the message and exit 2.

    The message names the file, row or option, shows the value, and says what to do.
    """
