"""Built-in commands beyond ``plugins`` and ``list``: added through the same ``register_commands`` hook."""

from genattr import hookimpl


@hookimpl
def register_commands(cli):
    pass
