"""What went wrong, and whose move it is: the project's exception types for inputs a user can fix.

Every ``tools/*.py`` runs its ``main`` through :func:`pretrain.cli.run_tool`. An exception of a type
below (a user error) ends the tool with one line on stderr,

    error: <what was wrong, what was expected, how to fix it>

and exit status 2, never a traceback; any other exception is a bug and keeps its traceback. So the
type says which is which: raise these where the project checks an input, with a message that names
the file or key, what it should be, and how to fix it, on one line.

Each also derives from the builtin a caller would catch before (``ValueError``, ``FileNotFoundError``,
``OSError``), so ``except ValueError`` keeps working.
"""
from __future__ import annotations

__all__ = ["UserError", "ConfigError", "InputNotFound", "DataError", "DiskFull"]


class UserError(Exception):
    """An input the user can fix (a flag, a config, a file, a dataset, the machine's setup)."""


class ConfigError(UserError, ValueError):
    """A config file, a config key, an override or a command-line value that is not valid."""


class InputNotFound(UserError, FileNotFoundError):
    """A file or folder a flag or a config names does not exist (a checkpoint, a dataset, a config)."""


class DataError(UserError, ValueError):
    """A dataset that exists but cannot be used as it is: empty, unreadable, too small for a batch,
    without its validation split, or with classes that do not match the model."""


class DiskFull(UserError, OSError):
    """Writing a run's file failed for lack of space (or quota); the file there before is unchanged."""
