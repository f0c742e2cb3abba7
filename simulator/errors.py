"""One exception type for every user-facing input problem.

The CLI turns it into a single line (``error: FILE:LINE: field 'x': message``) and a non-zero exit,
so no bad input ever surfaces as a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InputError(Exception):
    """Bad user input: a trace row, a flag, a profile. Carries where it happened."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        what = f"field '{self.field}': " if self.field else ""
        return f"{where}{what}{self.message}".replace("\n", " ")


def suggest(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean ...?)' hint for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(name.lower(), list(choices), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""
