"""A long-format CSV file as columns, read by pyarrow's CSV reader, with errors that name the file's line.

:func:`read_long_csv` returns :class:`CsvColumns`: the line of every data row, the sequence ids and labels
(factorized in order of first appearance), the time steps (float64), the features ``(rows, F)``
(float32; beyond float32's range becomes infinity and is refused later) and the split column. pyarrow
reads the file (multi-threaded, numbers parsed as Python's ``float()`` reads them); this module adds what
a person needs when the file is wrong: the first problem by line — a ragged row, a time step or feature
that is not a number, NaN or infinity, an empty label, a split other than train/test — as
``file:line: message``. Rows that are empty or hold only whitespace and commas are skipped, as a
spreadsheet's trailing rows.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..study.data import DataError


@dataclass
class Factorized:
    """``codes`` ``(rows,)`` into ``names`` (in order of first appearance), and each name's first row."""

    codes: np.ndarray
    names: list[str]
    first_row: np.ndarray


@dataclass
class CsvColumns:
    lines: Any  # row -> its 1-based line in the file (``lines[k]``; worked out only when asked)
    ids: Factorized
    labels: Factorized
    times: np.ndarray  # (rows,) float64
    values: list[np.ndarray]  # blocks (rows_i, F) float32, in row order
    splits: np.ndarray | None  # (rows,) int8, 1 = test, or None without a split column


def _pa() -> tuple[Any, Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pcsv
    except ImportError:
        raise DataError("reading a .csv file needs pyarrow: install the CLI extra, "
                        "pip install 'rnndrop[cli]'") from None
    return pa, pc, pcsv


def _header(raw: bytes, path: Path) -> tuple[list[str], int]:
    """The header's fields and the offset of the first data byte."""
    end = raw.find(b"\n")
    first = raw if end < 0 else raw[:end]
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: cannot read as UTF-8 text ({exc})") from None
    fields = next(csv.reader([text.rstrip("\r")]), None)
    if not fields or not text.strip():
        raise DataError(f"{path}: empty file, expected a header row")
    return [f.strip() for f in fields], (len(raw) if end < 0 else end + 1)


def _bad_utf8_line(raw: bytes) -> tuple[int, str]:
    """Line (1-based) and decoder message of the first invalid UTF-8 byte (the slow path of an error)."""
    for k, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return k, str(exc)
    return 0, "invalid UTF-8"


def _line_table(raw: bytes, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per line after the header (line 2 on): holds something besides whitespace; besides whitespace and
    commas; its number of fields (commas + 1). For files without quote characters."""
    body = np.frombuffer(raw, dtype=np.uint8)[start:]
    ends = np.flatnonzero(body == 10)
    if not len(body) or body[-1] != 10:
        ends = np.append(ends, len(body))
    begins = np.concatenate([[0], ends[:-1] + 1])

    def per_line(mask: np.ndarray) -> np.ndarray:
        counts = np.concatenate([[0], np.cumsum(mask)])
        return counts[ends] - counts[np.minimum(begins, len(body))]

    space = np.isin(body, np.frombuffer(b" \t\r\n\v\f", dtype=np.uint8))
    comma = body == 44
    return per_line(~space) > 0, per_line(~space & ~comma) > 0, per_line(comma) + 1


def _quoted_lines(text: str) -> list[tuple[int, int, bool]]:
    """(line, fields, holds more than whitespace and commas) of every row of a file with quoted fields (Python's
    csv module), empty and whitespace-only lines left out as pyarrow leaves them out."""
    reader = csv.reader(io.StringIO(text, newline=""))
    out = []
    line = 1
    next(reader, None)
    for row in reader:
        start, line = line + 1, reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        out.append((start, len(row), any(v.strip() for v in row)))
    return out


class _Lines:
    """The file's line of each row pyarrow returns, worked out only when a message needs one."""

    def __init__(self, path: Path, ncols: int, quoted: bool) -> None:
        self.path, self.ncols, self.quoted = path, ncols, quoted
        self._rows: np.ndarray | None = None
        self._ragged: list[int] = []

    def _compute(self) -> None:
        raw = self.path.read_bytes()
        start = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
        lone_cr = raw.count(b"\r") != raw.count(b"\r\n")
        if self.quoted or lone_cr:
            listed = _quoted_lines(raw[start:].decode("utf-8", "replace"))
            self._rows = np.array([ln for ln, n, _ in listed if n == self.ncols], dtype=np.int64)
            self._ragged = [ln for ln, n, real in listed if n != self.ncols and real]
            return
        end = raw.find(b"\n", start)
        offset = len(raw) if end < 0 else end + 1
        has_any, has_real, fields = _line_table(raw, offset)
        lines = np.arange(2, len(has_any) + 2)
        self._rows = lines[has_any & (fields == self.ncols)]
        self._ragged = lines[has_real & (fields != self.ncols)].tolist()

    def rows(self) -> np.ndarray:
        if self._rows is None:
            self._compute()
        assert self._rows is not None
        return self._rows

    def ragged(self) -> list[int]:
        if self._rows is None:
            self._compute()
        return self._ragged


def _has_byte(path: Path, byte: bytes) -> bool:
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            if byte in block:
                return True
    return False


def read_long_csv(path: Path, id_column: str, time_column: str, label_column: str, split_column: str) -> CsvColumns:
    """Read and check a long-format CSV (see the module docstring). Raises :class:`DataError`."""
    pa, pc, pcsv = _pa()
    try:
        with path.open("rb") as f:
            head = f.read(1 << 16)
            while b"\n" not in head:
                block = f.read(1 << 16)
                if not block:
                    break
                head += block
    except OSError as exc:
        raise DataError(f"{path}: cannot read as UTF-8 text ({exc})") from None
    bom = 3 if head.startswith(b"\xef\xbb\xbf") else 0
    header, _ = _header(head[bom:], path)
    missing = [c for c in (id_column, time_column, label_column) if c not in header]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing} in the header {header}; expected a sequence-id "
            f"column {id_column!r}, a time column {time_column!r} and a label column {label_column!r} "
            "(rename them or pass --id-col / --time-col / --label-col)"
        )
    if len(set(header)) != len(header):
        raise DataError(f"{path}: duplicate column names in the header {header}")
    special = {id_column, time_column, label_column, split_column}
    features = [h for h in header if h not in special]
    if not features:
        raise DataError(f"{path}: no feature columns besides {sorted(special & set(header))}")
    quoted = _has_byte(path, b'"')
    lines = _Lines(path, len(header), quoted)
    ragged: list[tuple[str, int]] = []

    def invalid(row: Any) -> str:
        if row.text.strip(" \t\r,"):  # whitespace-only lines are skipped; others are reported by line
            ragged.append((row.text, row.actual_columns))
        return "skip"

    names = [f"c{k}" for k in range(len(header))]  # positional: a header name may be anything
    col = {h: names[k] for k, h in enumerate(header)}
    number_cols = {col[h] for h in (time_column, *features)}
    as_text: set[str] = set()  # number columns pyarrow could not parse: read as text, checked row by row

    problems: list[tuple[int, int, str]] = []  # (line, order within a line, message)

    def line(k: int) -> int:
        """The file line of row ``k`` as pyarrow returned the rows (blank ones included)."""
        rows_at = lines.rows()
        return int(rows_at[k]) if k < len(rows_at) else k + 2

    while True:
        try:
            parts = _stream(pa, pc, pcsv, path, names, col, header, number_cols, as_text, quoted, invalid,
                            id_column, label_column, split_column, time_column, features)
            break
        except pa.ArrowInvalid as exc:
            ragged.clear()
            message = str(exc)
            if "UTF8" in message or "utf8" in message.lower():
                where, why = _bad_utf8_line(path.read_bytes()[bom:])
                raise DataError(f"{path}: cannot read as UTF-8 text (line {where}: {why})") from None
            failed = [n for n in number_cols - as_text if f"column #{names.index(n)}" in message
                      or f"'{n}'" in message]
            if not failed:
                failed = list(number_cols - as_text)  # which one is not said: take them all as text
            if not failed:
                raise DataError(f"{path}: not a readable CSV file ({exc})") from None
            as_text.update(failed)
    if ragged:
        _, count = ragged[0]
        found = lines.ragged()
        problems.append((found[0] if found else 0, 0, f"ragged row with {count} fields, the header has {len(header)}"))
    blank = np.concatenate(parts["blank"]) if parts["blank"] else np.zeros(0, dtype=bool)
    keep = np.flatnonzero(~blank)
    rows = len(keep)
    if rows == 0 and not problems:
        raise DataError(f"{path}: no data rows after the header")
    for order, first, message in parts["problems"]:  # rows of pyarrow's numbering, blank ones never among them
        problems.append((line(first), order, message))
    if problems:
        where, _, message = min(problems)
        raise DataError(f"{path}:{where}: {message}")
    all_rows = len(blank)

    def at(k: int) -> int:
        """The file line of row ``k`` of the blank-free columns."""
        return line(int(keep[k]) if rows < all_rows else k)

    def joined(key: str) -> Any:
        chunks = parts.pop(key)
        column = pa.chunked_array(chunks, type=pa.string()) if chunks and not isinstance(chunks[0], np.ndarray) \
            else np.concatenate(chunks)
        if rows < all_rows:
            return column.take(pa.array(keep)) if not isinstance(column, np.ndarray) else column[keep]
        return column

    id_codes, label_codes = _factorize(joined("ids")), _factorize(joined("labels"))
    splits = joined("splits") if split_column in header else None
    times = joined("times")
    parts_values = parts.pop("values")  # kept in blocks: the padded sequences are filled from them directly
    if rows < all_rows:
        bounds = np.cumsum([0, *(len(v) for v in parts_values)])
        parts_values = [v[~blank[a:b]] for v, a, b in zip(parts_values, bounds[:-1], bounds[1:])]
    values = parts_values
    return CsvColumns(_LazyLines(at, rows), id_codes, label_codes, times, values, splits)


class _LazyLines:
    """Row -> file line, computed on first use (only error messages need it)."""

    def __init__(self, at: Any, rows: int) -> None:
        self._at, self._rows = at, rows

    def __getitem__(self, k: int) -> int:
        return self._at(int(k))

    def __len__(self) -> int:
        return self._rows


def _factorize(column: Any) -> Factorized:
    """Codes in order of first appearance (pyarrow's dictionary encoding), the names, each name's first row."""
    encoded = column.dictionary_encode().combine_chunks() if hasattr(column, "combine_chunks") else \
        column.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    names = [str(v) for v in encoded.dictionary.to_pylist()]
    first = np.full(len(names), -1, dtype=np.int64)
    order = np.arange(len(codes))[::-1]
    first[codes[::-1]] = order  # the last write per code is its first row
    return Factorized(codes, names, first)


def _stream(pa: Any, pc: Any, pcsv: Any, path: Path, names: list[str], col: dict[str, str], header: list[str],
            number_cols: set[str], as_text: set[str], quoted: bool, invalid: Any, id_column: str, label_column: str,
            split_column: str, time_column: str, features: list[str]) -> dict[str, Any]:
    """Read the file block by block into compact columns (text as Arrow strings, numbers as numpy arrays), with
    the first problem of each kind as ``(order, row, message)`` (rows numbered as pyarrow returns them)."""
    types = {n: (pa.float64() if n in number_cols - as_text else pa.string()) for n in names}
    reader = pcsv.open_csv(
        path, read_options=pcsv.ReadOptions(column_names=names, skip_rows=1, block_size=1 << 21),
        parse_options=pcsv.ParseOptions(invalid_row_handler=invalid, newlines_in_values=quoted),
        convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False,
                                            quoted_strings_can_be_null=False, null_values=[""]),
        memory_pool=pa.system_memory_pool(),  # returns freed blocks to the system: a lower peak
    )
    out: dict[str, Any] = {"blank": [], "ids": [], "labels": [], "splits": [], "times": [], "values": [],
                           "problems": []}
    seen: set[tuple[int, str]] = set()  # (order, column) already reported: the first row of each is enough
    offset = 0

    def problem(order: int, name: str, row: int, message: str) -> None:
        if (order, name) not in seen:
            seen.add((order, name))
            out["problems"].append((order, row, message))

    def text(batch: Any, name: str) -> Any:
        return pc.utf8_trim_whitespace(batch.column(names.index(col[name])))

    def empty(column: Any) -> np.ndarray:
        if pa.types.is_floating(column.type):
            return pc.is_null(column).to_numpy(zero_copy_only=False)
        return pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0).to_numpy(zero_copy_only=False)

    def numbers(batch: Any, name: str, blank: np.ndarray, what: str, order: int) -> tuple[np.ndarray, int | None]:
        column = batch.column(names.index(col[name]))
        if pa.types.is_floating(column.type):
            values = column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            missing = np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False) & ~blank)
            if len(missing):
                problem(order, name, offset + int(missing[0]), what.format(name=name, text=""))
                return values, int(missing[0])
            return values, None
        values = np.full(len(blank), np.nan)
        for k, v in enumerate(column.to_pylist()):  # only a column pyarrow could not parse comes here
            if blank[k]:
                continue
            try:
                values[k] = float(v)
            except ValueError:
                problem(order, name, offset + k, what.format(name=name, text=v.strip()))
                return values, k
        return values, None

    for batch in reader:
        n = batch.num_rows
        blank = np.ones(n, dtype=bool)
        for k in range(len(names)):
            blank &= empty(batch.column(k))
        out["blank"].append(blank)
        ids, labels = text(batch, id_column), text(batch, label_column)
        empty_label = pc.equal(pc.utf8_length(labels), 0).to_numpy(zero_copy_only=False) & ~blank
        if empty_label.any():
            problem(4, label_column, offset + int(np.argmax(empty_label)), "empty label")
        out["ids"].append(ids.cast(pa.string()))
        out["labels"].append(labels.cast(pa.string()))
        if split_column in header:
            lowered = pc.utf8_lower(text(batch, split_column))
            is_test = pc.equal(lowered, "test").to_numpy(zero_copy_only=False)
            wrong = ~(is_test | pc.equal(lowered, "train").to_numpy(zero_copy_only=False)) & ~blank
            if wrong.any():
                first = int(np.argmax(wrong))
                problem(5, split_column, offset + first, f"column {split_column!r} must be 'train' or 'test', got "
                                                         f"{lowered[first].as_py()!r}")
            out["splits"].append(is_test.astype(np.int8))
        times, _ = numbers(batch, time_column, blank, "time step {text!r} is not a number", 1)
        out["times"].append(times)
        values = np.empty((n, len(features)), dtype=np.float32)
        for k, name in enumerate(features):
            parsed, bad = numbers(batch, name, blank, "feature column {name!r} holds a non-numeric value {text!r}", 2)
            finite = np.isfinite(parsed) | blank
            if bad is not None:
                finite[bad:] = True  # past an unparsed value the row's numbers are not known
            if not finite.all():
                problem(3, name, offset + int(np.argmin(finite)), f"NaN or infinite value in feature column {name!r}")
            with np.errstate(over="ignore", invalid="ignore"):  # beyond float32's range: check_finite names it
                values[:, k] = parsed
        out["values"].append(values)
        offset += n
    return out
