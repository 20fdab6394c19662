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


class ModelError(ValueError):
    """A trained model cannot be loaded as asked: a file missing from its folder, another format version,
    encoder or LM weights other than those it was trained with. The message names what is missing or
    different."""


# exit codes: 0 done, 1 a bug (a traceback), and these for the faults a user can fix (one line, no traceback)
EXIT_PARAMS = 2  # a params value is unknown, of the wrong type or out of range
EXIT_DATA = 3  # an input or output cannot be used: data, a file, a missing optional package
EXIT_NOT_COMPARABLE = 4  # python -m edge_glass.compare: the two runs scored different test items

EXIT_CODES: dict[type[BaseException], int] = {
    ParamsError: EXIT_PARAMS,
    DataError: EXIT_DATA,
    OutputError: EXIT_DATA,
    ModelError: EXIT_DATA,
    FileNotFoundError: EXIT_DATA,
    ImportError: EXIT_DATA,
}


def exit_code(exc: BaseException) -> int | None:
    """The exit code of a known fault (the first matching class of ``EXIT_CODES``), None for a bug."""
    return next((code for kind, code in EXIT_CODES.items() if isinstance(exc, kind)), None)
