"""Errors about the user's input: a file, a recipe value, a checkpoint that does not fit.

The ``speechlab`` command reports these in one line (``speechlab <command>: error: <message>``,
exit status 2) instead of a traceback, for tools and the Lightning subcommands alike; the
message names the thing (a path, a recipe key) and the reason. They are ``ValueError``\\ s, so
code that catches ``ValueError`` keeps working.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input, named in the message (e.g. ``"other.json: this GramSet (31 outputs) does
    not match the checkpoint's gram head (79 outputs) ..."``)."""


class CLIError(InputError):
    """An error of a command-line tool's input (an option value, a missing program such as
    espeak-ng) that the ``speechlab`` command reports in one line and exits 2 on.

    It lives here, not in :mod:`speechlab.cli`, so that library modules can raise it without
    importing the console script (nothing in the library imports :mod:`speechlab.cli`; a module
    run as ``__main__`` would also be a second copy, whose classes would not match the ones a
    library module raised). ``speechlab.cli.CLIError`` is this class, kept for compatibility.
    """
