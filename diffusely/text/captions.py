"""Captions for a folder of images: a .txt file beside each image, or a table as Hugging Face's imagefolder has it.

    photos/cat.png + photos/cat.txt                      the .txt holds the caption
    photos/metadata.jsonl   {"file_name": "cat.png", "text": "a cat on a sofa"}   one object a line
    photos/metadata.csv     file_name,text                                        (or captions.csv / captions.jsonl)

A table's file_name is relative to the folder the table is in, and a table may sit in any subfolder.
The caption column is `text` (or `caption`). A table's caption wins over a .txt beside the image.
Every file is UTF-8 (a byte order mark, as Excel writes, is fine) and a regular file: a FIFO or device
named like a caption is refused, never opened.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..data import DataError
from ..data.reading import read_text

TABLES = ("metadata.jsonl", "metadata.csv", "captions.jsonl", "captions.csv")
TEXT_KEYS = ("text", "caption")


def read_captions(root, image_paths) -> list[str]:
    """The caption of each image under `root`, in the order of `image_paths`. Raises DataError naming the
    images that have none, or a table that cannot be read."""
    root = Path(root)
    from_tables: dict[str, str] = {}
    for table in sorted(p for name in TABLES for p in root.rglob(name) if not _hidden(p, root)):
        for file_name, text in _read_table(table):
            from_tables[(table.parent / file_name).resolve().as_posix()] = text
    captions, missing = [], []
    for path in map(Path, image_paths):
        text = from_tables.get(path.resolve().as_posix())
        if text is None and path.with_suffix(".txt").exists():  # read_text refuses a folder, FIFO or device
            text = read_text(path.with_suffix(".txt"), "caption file")
        text = " ".join(text.split()) if text is not None else ""
        if not text:
            missing.append(path)
        captions.append(text)
    if missing:
        example = missing[0].relative_to(root) if missing[0].is_relative_to(root) else missing[0]
        raise DataError(f"{len(missing)} of {len(captions)} images under {root} have no caption (or an empty one), "
                        f"e.g. {example}; put a .txt beside each image, or list them in a metadata.jsonl or "
                        f"metadata.csv with columns file_name and text")
    return captions


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _read_table(path: Path) -> list[tuple[str, str]]:
    """(file_name, caption) rows of a metadata.jsonl or .csv file."""
    rows = []
    text = read_text(path, "caption table")  # as utf-8-sig: a BOM would otherwise rename the first column
    if path.suffix == ".csv":
        try:
            records = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as e:
            raise DataError(f"cannot read the caption table {path}: {e}") from None
        where = lambda i: f"{path}, row {i + 2}"  # noqa: E731  (row 1 is the header)
    else:
        # split("\n"), not splitlines(): a JSON string may hold U+2028, which splitlines() breaks at
        records = [_json_line(path, i, line) for i, line in enumerate(text.split("\n")) if line.strip()]
        where = lambda i: f"{path}, record {i + 1}"  # noqa: E731
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "file_name" not in record:
            raise DataError(f"{where(i)} has no file_name; a caption table needs the columns file_name and text")
        key = next((k for k in TEXT_KEYS if k in record), None)
        if key is None:
            raise DataError(f"{where(i)} has no caption: it needs a text column, has {', '.join(map(str, record))}")
        rows.append((str(record["file_name"]), str(record[key] or "")))
    return rows


def _json_line(path: Path, i: int, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {i + 1} is not JSON: {e}") from None
    except RecursionError:  # python's parser recurses once a nesting level
        raise DataError(f"{path}, line {i + 1} nests its JSON too deep to read; a record is one flat object") from None
