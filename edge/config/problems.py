"""What is wrong with a config file, said so that people can fix it.

Every check of the package reports a ``Problem``: the file, the key path, what is wrong
and an example of right; printed as one line
``FILE: KEY.PATH: what is wrong (example of right)``. ``ConfigError`` carries every
problem found in a file (and in the maps a gateway file names), never just the first.
File names in problems are shown with ``display_path``. Depends on nothing else of
plantsync.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ConfigError", "Problem", "display_path"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in one file. ``hint`` is an example of right (or a suggestion)."""

    file: str
    key_path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        parts = [self.file]
        if self.key_path:
            parts.append(self.key_path)
        text = ": ".join(parts) + ": " + self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(Exception):
    """A gateway config or map that cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def display_path(path: Path | str) -> str:
    """The path as people should read it: relative to the cwd when under it."""
    text = os.path.normpath(str(path))
    if os.path.isabs(text):
        try:
            rel = os.path.relpath(text)
        except ValueError:
            return text
        if not rel.startswith(".."):
            return rel
    return text
