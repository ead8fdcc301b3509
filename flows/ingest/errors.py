"""What we say about input we cannot take: a row-level ``Problem`` or a file-level ``IngestError``.

Both name the place (row, line, column) and the problem in words a person can act on. The parsers raise
nothing else for bad input: the fuzz tests hold them to that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


def place(row: int | None = None, line: int | None = None, column: str | None = None) -> str:
    """ "row 18,204 (line 18,205), column price" with whichever parts are known."""
    parts = []
    if row is not None:
        parts.append(f"row {row:,}" + (f" (line {line:,})" if line is not None and line != row else ""))
    elif line is not None:
        parts.append(f"line {line:,}")
    if column is not None:
        parts.append(f"column {column}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Problem:
    """One rejected row (or, inside an ``IngestError``, the reason a whole file is refused)."""

    message: str
    row: int | None = None
    line: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = place(self.row, self.line, self.column)
        return f"{where}: {self.message}" if where else self.message

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": str(self)}


class IngestError(ValueError):
    """The whole input is refused (empty, binary, broken structure, too big, nothing to import...)."""

    def __init__(
        self, message: str, *, row: int | None = None, line: int | None = None, column: str | None = None
    ) -> None:
        self.problem = Problem(message, row, line, column)
        super().__init__(str(self.problem))

    @classmethod
    def of(cls, problem: Problem) -> IngestError:
        return cls(problem.message, row=problem.row, line=problem.line, column=problem.column)
