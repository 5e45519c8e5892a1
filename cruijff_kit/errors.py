"""The one error type users see: a single line naming the field, the value and the fix."""

from __future__ import annotations


class CkError(Exception):
    """A user-facing error. `ck` prints `str(err)` on one line and exits with `exit_code`."""

    exit_code = 2

    def __init__(self, field: str, value: object, problem: str, fix: str | None = None):
        self.field = field
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(self._line())

    def _line(self) -> str:
        line = f"{self.field}={self.value!r}: {self.problem}"
        if self.fix:
            line += f"; fix: {self.fix}"
        return " ".join(line.split())  # always one line
