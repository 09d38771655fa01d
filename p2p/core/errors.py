"""Exception types with messages a user can act on.

Every error names *where* the problem is (a file, a folder or a config field) and *what* is
wrong, so the CLI can print it as one line: ``error: <where>: <problem>``.
"""

from __future__ import annotations

from pathlib import Path


class P2PError(Exception):
    """Base of all p2p errors.

    Args:
        where: The file, folder or config field the problem is about.
        problem: What is wrong and, where possible, what to do about it.
    """

    def __init__(self, where: str | Path, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{_one_line(self.where)}: {_one_line(problem)}")


def _one_line(text: str) -> str:
    """`text` with control characters escaped (a file name may hold a newline), so the message
    stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConfigError(P2PError):
    """A configuration value or file is invalid."""


class InputError(P2PError):
    """An input raster, chip folder or scene list is unusable."""


class AlignmentError(InputError):
    """Source and target (or prediction and reference) cannot be put on one grid."""


class BundleError(P2PError):
    """A model bundle is missing, from a newer format, or corrupt."""


class CheckpointError(P2PError):
    """A training checkpoint cannot be loaded."""


class StageError(P2PError):
    """A pipeline stage cannot run with what earlier stages left."""


class TrainingDiverged(StageError):
    """A loss or a weight went NaN or infinite: training stops before the epoch's checkpoint."""


class PathNotAllowedError(P2PError):
    """A path given as a flow parameter lies outside the allowed roots."""


class OutputError(P2PError):
    """An output could not be written completely (disk full, read-only, I/O error)."""
