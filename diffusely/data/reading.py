"""Reading a dataset's files without surprises: regular files only, text as UTF-8, problems counted per dataset.

A FIFO, a device or a folder where a file is expected is refused before it is opened (open() on a FIFO waits
for a writer forever); text that is not UTF-8 is refused with the file named, not a traceback; a UTF-8 byte
order mark (what Excel and Notepad write) is read as the start of the file, not as a character.
"""

from __future__ import annotations

import stat
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from . import DataError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def regular_file(path, what: str = "file") -> Path:
    """`path` when it is a regular file or a link to one. A DataError naming it when it is a folder, FIFO,
    device or socket; a missing file raises FileNotFoundError (an OSError), for the caller to report or skip."""
    path = Path(path)
    mode = path.stat().st_mode  # follows links: a link to a regular file is fine
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise DataError(f"{path} is {kind}, not a file; the {what} must be a regular file (it was not opened)")
    return path


def read_text(path, what: str = "file") -> str:
    """The text of a regular file read as UTF-8 (a leading byte order mark dropped), or a DataError naming the
    file: missing, not a regular file, unreadable, or in another encoding."""
    path = Path(path)
    try:
        data = regular_file(path, what).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read the {what} {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"the {what} {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                        f"save it as UTF-8") from None


@dataclass
class Notes:
    """Problems found while reading, by kind: each kind a count and its first examples."""

    found: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, where: str) -> None:
        self.found[kind].append(where)

    def count(self, kind: str) -> int:
        return len(self.found.get(kind, ()))

    def text(self, kind: str, limit: int = 3) -> str:
        items = self.found[kind]
        more = f" and {len(items) - limit} more" if len(items) > limit else ""
        return f"{'; '.join(items[:limit])}{more}"

    def raise_errors(self, kinds: dict[str, str]) -> None:
        for kind, what in kinds.items():
            if self.found.get(kind):
                raise DataError(f"{len(self.found[kind])} {what}: {self.text(kind, 5)}")

    def warn(self, kinds: dict[str, str]) -> None:
        for kind, what in kinds.items():
            if self.found.get(kind):
                warnings.warn(f"{len(self.found[kind])} {what}: {self.text(kind)}", UserWarning, stacklevel=3)
