"""Exceptions raised by vlprompt.

Every user-facing failure (bad path, bad name, bad file) raises a subclass of
:class:`VlpromptError` carrying one message that says what was wrong and what was
expected. The CLI prints that message and exits with status 2, without a traceback.
"""

from __future__ import annotations


class VlpromptError(Exception):
    """Base class of all errors caused by user input."""


class DatasetError(VlpromptError):
    """A dataset root, split file or image is missing or malformed."""


class CheckpointError(VlpromptError):
    """A checkpoint cannot be read, is untrusted, or does not match the architecture."""


class ConfigError(VlpromptError):
    """An unknown name (method, dataset, backbone) or an invalid configuration value."""


class OutputError(VlpromptError):
    """An output file cannot be written: the folder is not writable or the disk is full."""


class TrainingError(VlpromptError):
    """Training cannot go on, e.g. the loss became NaN or infinite (a learning rate too high for the run)."""


class VlpromptWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. fewer images than the requested shots).

    The CLI prints these as ``warning: <message>`` on stderr.
    """
