"""The errors the CLI prints as one line: :class:`UserError` (the user's to fix; exit status 2), and
:class:`EnvironmentFault` (the machine's: a full disk, a removed run directory) and :class:`PluginFault` (a
plugin raised or broke its contract) with exit status 1."""

import errno as _errno


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


class EnvironmentFault(Exception):
    """A fault of the environment, not of the input (a full disk, a run directory removed during the run, a worker
    that died): one line naming the cause and the fix; exit status 1."""


class PluginFault(Exception):
    """A plugin raised an exception or broke its contract during a run (the cell it was in is named); one line,
    exit status 1; the full traceback goes to the run directory's ``errors.log``."""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or quota) is full — an ``OSError`` with ``ENOSPC`` / ``EDQUOT``, or a library's
    wrapper of one whose message names it (safetensors: ``… (os error 28)``)."""
    if isinstance(exc, OSError) and exc.errno in (_errno.ENOSPC, _errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text
