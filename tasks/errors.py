"""The one base class of failures that are the user's to fix (bad input, bad config, a service down).

The CLIs print these as one line and exit 1; anything else is a bug and keeps its traceback.
"""


class RnerError(Exception):
    """A failure whose message tells the user what is wrong and where."""
