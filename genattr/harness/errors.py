"""Errors that are the user's to fix: the CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """A mistake in the user's input (unknown name, bad option, missing path). Message: one specific line."""


class PluginError(UserError):
    """A plugin problem the user can act on (duplicate component name, broken plugin in strict mode)."""


def did_you_mean(name: str, choices, n: int = 3) -> str:
    """' (did you mean: a, b?)' for the closest of ``choices`` to ``name``, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


class ScoringError(RuntimeError):
    """A method broke the scoring contract (wrong shape, NaN scores): one line naming the method. Not the user's
    mistake, so not a :class:`UserError`; the CLI still prints it as one line."""
