"""The one error type users see for bad input: it names the file, the line and the field."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (a record, a recipe, a flag). The message says where and what."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f":{line}"
            where += ": "
        if field is not None:
            where += f"field '{field}': "
        super().__init__(where + message)
        self.message, self.path, self.line, self.field = message, path, line, field
