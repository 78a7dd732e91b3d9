"""The errors a user can fix, importable from every layer (this module imports nothing of ours).

Every message says *what* is wrong, *where* (the file, the annotation id, the config key, the flag) and *the
fix*, in one line. The tools print it as ``error: <message>`` and exit with code 2 (130 for
``Interrupted``, 128 + the signal's number for ``Stopped``), without a traceback (``--debug`` shows it); see
``tools._common.run_cli``. Anything else that escapes a tool is a bug in this repository and keeps its
traceback (exit code 1).

    UserError
    ├── ConfigError       a config file, override or value out of range      (key names the place)
    ├── DataError         an annotation file, image or label that cannot be used (file + id + field)
    ├── CheckpointError   a checkpoint or exported model that does not fit    (file + what differs)
    ├── InputError        a command-line input: a missing file, a clashing flag, a video that won't open
    ├── RunDirError       a run folder that already holds a run               (--resume or --overwrite)
    └── Interrupted       Ctrl-C during training: where it stopped, how to go on (exit code 130)
        └── Stopped       SIGTERM (or a configured SIGUSR1) during training: the same (exit code 128 + signal)

The subclasses keep ``ValueError``/``FileNotFoundError`` as second bases where callers (and users' code)
already catch those.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; the message names what, where and the fix."""


class ConfigError(UserError, ValueError):
    """A config file, override or value that does not fit the schema or its valid range."""


class DataError(UserError, ValueError):
    """Annotations or images that cannot be used as they are (names the file, the id and the field)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or exported model that is missing, corrupt, or belongs to another task or shape."""


class InputError(UserError, ValueError):
    """A command-line input that cannot be used: a missing file, clashing flags, an unreadable video."""


class RunDirError(UserError):
    """A run folder that already holds a run: never written into except by --resume or --overwrite."""


class Interrupted(UserError):
    """The user pressed Ctrl-C; the message says where it stopped and how to continue (exit code 130)."""

    exit_code = 130


class Stopped(Interrupted):
    """A signal from outside (SIGTERM from a scheduler, SIGUSR1 when ``train.stop_signals`` names it) stopped
    training; the message says where and how to continue.

    The exit code is the shell's for a death by that signal, 128 + its number (143 for SIGTERM, 138 for
    SIGUSR1, 140 for SIGUSR2), so a wrapper script tells a stop from an error (2) or a bug (1) just as it
    would tell a process killed by the signal, and a stop from Ctrl-C (130).
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + int(signum)
