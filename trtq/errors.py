"""The one exception type users see.

Anything raised as ``TrtqError`` is a problem with the user's input (a bad recipe, an unknown model,
a foreign artifact...). The CLI prints its message as one line and exits with status 2; everything else
is a bug and keeps its traceback.
"""


class TrtqError(Exception):
    """A user-facing error: the message says what is wrong and, where possible, what to do."""
