"""The errors a stage stops on, and the exit code each gives (one clear line, no traceback).

Item-level faults are not errors: a bad file is a reject with a reason. These are the systemic faults
that stop a stage; ``edge_glass.cli.run_stage`` maps them to exit codes (EXIT_CODES).
"""

from __future__ import annotations


class ParamsError(ValueError):
    """A params.yaml value is unknown, of the wrong type or out of range."""


class DataError(ValueError):
    """A systemic fault in a source's input (unreadable annotation file, missing column): stops the stage."""


class MediaError(ValueError):
    """An input file that cannot be used; the message is the reject reason."""


class OutputError(OSError):
    """An output could not be written (disk full, read-only, missing permission)."""
