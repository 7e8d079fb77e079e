"""What the UI lets a browser touch: paths inside the allowed roots only, uploads under a size limit.

Anyone who can reach the page can type a path, so every path a form gives (a data folder, a run to write, an
output folder) is resolved (symlinks and `..` followed) and refused unless it lies inside one of the roots the
server was started with (RUNS_DIR, and any --allow PATH).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MAX_UPLOAD_MB = 10  # an uploaded image larger than this is refused (the browser is told, nothing is read)


class Refused(ValueError):
    """A path outside the allowed roots, or an upload over the size limit; the message says which and why."""


@dataclass(frozen=True)
class Roots:
    """The folders the UI may read and write under; `runs` (the first) is where runs are listed and made."""

    runs: Path
    others: tuple[Path, ...] = ()
    max_upload_bytes: int = MAX_UPLOAD_MB * 2**20

    @classmethod
    def of(cls, runs_dir: str | Path, allow=(), max_upload_mb: float = MAX_UPLOAD_MB) -> "Roots":
        return cls(Path(runs_dir).resolve(), tuple(Path(p).resolve() for p in allow), int(max_upload_mb * 2**20))

    @property
    def all(self) -> tuple[Path, ...]:
        return (self.runs, *self.others)

    def inside(self, path: str | Path, what: str = "path") -> Path:
        """`path` resolved (relative paths are taken under RUNS_DIR); Refused unless inside an allowed root."""
        text = str(path or "").strip()
        if not text:
            raise Refused(f"give a {what}")
        p = Path(os.path.expanduser(text))
        resolved = (p if p.is_absolute() else self.runs / p).resolve()
        if not any(resolved == root or root in resolved.parents for root in self.all):
            raise Refused(f"{what} {text} is outside the folders this UI may use ({', '.join(map(str, self.all))}); "
                          f"restart `diffusely ui` with --allow PATH to add one")
        return resolved

    def upload(self, path: str | Path, what: str = "upload") -> Path:
        """An uploaded file's path, refused when it is larger than the limit."""
        size = Path(path).stat().st_size
        if size > self.max_upload_bytes:
            raise Refused(f"the {what} is {size / 2**20:.1f} MB, over this UI's limit of "
                          f"{self.max_upload_bytes / 2**20:.0f} MB: send a smaller image (or restart with "
                          f"--max-upload-mb)")
        return Path(path)

    def list_runs(self) -> list[str]:
        """The run directories (holding config.json) under RUNS_DIR, two levels deep, as paths relative to it."""
        found = [p.parent for pattern in ("*/config.json", "*/*/config.json") for p in self.runs.glob(pattern)]
        return sorted(str(p.relative_to(self.runs)) for p in found if p.parent.name != "ui-outputs")
