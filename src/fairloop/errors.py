"""The one error type users see: it names the problem and the fix.

The CLI prints ``FairloopError`` as two lines (what is wrong, how to fix it) instead of a traceback.
The constructor also accepts a single string so the error survives being re-raised by torch's
DataLoader workers.
"""

from __future__ import annotations


class FairloopError(Exception):
    """A problem with the user's input or environment, with the fix spelled out."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem if not fix else f"{problem}\nFix: {fix}")
        self.problem = problem
        self.fix = fix


class DataError(FairloopError):
    """A dataset folder, attribute table or image file that cannot be used."""


class ConfigError(FairloopError):
    """An option value that does not fit the data or the model (unknown attribute, bad range)."""
