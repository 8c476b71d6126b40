"""The one error type users see as a clean message instead of a traceback."""


class RecipeError(Exception):
    """A problem with config or data, worded for the user: it names the key, file or line at fault."""
