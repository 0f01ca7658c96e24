"""Read a CSV file's columns with numpy: tokenizing and number parsing over bytes, no per-row Python.

:func:`read_rows` splits the body of a file into chunks of whole lines, and each chunk's fields into
columns: text columns as ``bytes`` arrays, number columns as byte matrices ``(rows, width)`` with each
field right-aligned (zero bytes before it). Separators and line ends are found in one vectorized pass;
fields are cut out with a sliding-window view.

:func:`parse_numbers` turns such a matrix into float64 with the semantics of Python's ``float()``, in
three tiers, each taking the rows the previous one could not:

1. fixed-point decimals up to 16 characters (``-12.5``, ``0.125730``, ``7``): eight digits at a time
   with integer arithmetic on 64-bit words, grouped by the number of decimals;
2. any plain decimal (``3e-4``, long mantissas): a vectorized scan of the characters;
3. everything else (``nan``, ``inf``, spaces around the number, ``1_000``, ...), and what cannot be
   proven exact: ``float()``, one field at a time.

Tiers 1 and 2 keep a value only when it is provably what ``float()`` returns (an integer mantissa below
2**53 divided or multiplied by an exact power of ten is one correctly rounded operation), so results
are identical bit for bit; values stored as float32 may also be kept when their float32 rounding is
certain to agree (``single=True``).

The vectorized tokenizer covers files without quote characters and with ``\\n`` or ``\\r\\n`` line
ends: what numpy, pandas and spreadsheets write for numeric data. Other files (quoted fields, lone
``\\r``) go through Python's csv module, slower, with the same results.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

CHUNK_BYTES = 1 << 21
_NL, _CR, _COMMA = 10, 13, 44
_POW10 = 10.0 ** np.arange(23)  # exact in float64 up to 10**22
_MAX_DIGITS = 18  # significant digits an int64 mantissa holds (10**18 < 2**63)
_TWO53 = 2**53


class CsvError(ValueError):
    """The file cannot be read as CSV text; ``line`` is its 1-based line number when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


@dataclass
class Rows:
    """A chunk of data rows: line numbers, text columns and number columns."""

    lines: np.ndarray  # (n,) int64, the 1-based line of each row in the file
    text: dict[int, np.ndarray] = field(default_factory=dict)  # column -> (n,) bytes, whitespace stripped
    numbers: dict[int, np.ndarray] = field(default_factory=dict)  # column -> (n, W) uint8, right-aligned
    widths: dict[int, np.ndarray] = field(default_factory=dict)  # column -> (n,) int64, the number fields' lengths
    ragged: tuple[int, int] | None = None  # (line, fields) of the chunk's first row with a wrong field count


def read_header(f: BinaryIO) -> tuple[list[str], bytes]:
    """The header's fields, and the bytes read past it. Raises :class:`CsvError`."""
    head = b""
    while b"\n" not in head:
        block = f.read(1 << 16)
        if not block:
            break
        head += block
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    end = head.find(b"\n")
    first, rest = (head, b"") if end < 0 else (head[:end], head[end + 1 :])
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CsvError(f"cannot read as UTF-8 text ({exc})") from None
    fields = next(csv.reader([text.rstrip("\r")]), None)
    if not fields or not text.strip():
        raise CsvError("empty file, expected a header row")
    return fields, rest


def read_rows(f: BinaryIO, pending: bytes, ncols: int, text: list[int], numbers: list[int]) -> Iterator[Rows]:
    """Chunks of the data rows (line 2 on) of the file ``f``, read on from after its header (``pending``).

    Rows that are empty or hold only whitespace and commas are skipped (as a spreadsheet's trailing
    rows). A row with another field count than ``ncols`` is reported in ``Rows.ragged`` and left out.
    The file is read in chunks: memory holds one chunk's bytes, not the file's.
    """
    line0 = 2
    while True:
        block = f.read(CHUNK_BYTES)
        data = pending + block
        if not data:
            return
        cut = data.rfind(b"\n") + 1 if block else len(data)
        if cut == 0:  # no line end in this chunk: a very long line, read on
            pending = data
            continue
        chunk, pending = data[:cut], data[cut:]
        carriage_returns = chunk.count(b"\r")
        if chunk.find(b'"') >= 0 or (carriage_returns and carriage_returns != chunk.count(b"\r\n")):
            # Quoted fields (which may hold line ends) or lone carriage returns: Python's csv module reads
            # the rest of the file.
            yield from _csv_module_rows(chunk + pending + f.read(), ncols, text, numbers, line0)
            return
        if not chunk.isascii():
            _check_utf8(chunk, line0)
        if not chunk.endswith(b"\n"):  # the file's last line has no line end
            chunk += b"\n"
        rows, lines_in_chunk = _tokenize(np.frombuffer(chunk, dtype=np.uint8), ncols, text, numbers, line0)
        yield rows
        line0 += lines_in_chunk
        if not block:
            return


def _check_utf8(chunk: bytes, line0: int) -> None:
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = line0 + chunk.count(b"\n", 0, exc.start)
        raise CsvError(f"cannot read as UTF-8 text (line {line}: {exc.reason})", line) from None


def _tokenize(a: np.ndarray, ncols: int, text: list[int], numbers: list[int], line0: int) -> tuple[Rows, int]:
    newline = a == _NL
    seps = np.flatnonzero((a == _COMMA) | newline)
    nl_at = np.flatnonzero(newline[seps])  # which separators end a line
    line_ends = seps[nl_at]
    line_starts = np.concatenate([[0], line_ends[:-1] + 1])
    commas = np.diff(nl_at, prepend=-1) - 1
    # A line holding only commas and whitespace (bytes <= 32, its line end included) is skipped.
    spaces = np.bincount(np.searchsorted(line_ends, np.flatnonzero(a <= 32)), minlength=len(line_ends))
    kept = line_ends - line_starts + 1 > commas + spaces
    lines = np.arange(line0, line0 + len(line_ends), dtype=np.int64)
    bad = kept & (commas != ncols - 1)
    take = kept & ~bad
    rows = Rows(lines=lines[take])
    if bad.any():
        first = int(np.argmax(bad))
        rows.ragged = (int(lines[first]), int(commas[first]) + 1)
    if not take.all():
        seps = seps[np.repeat(take, commas + 1)]
    ends = seps.reshape(-1, ncols)
    starts = np.empty_like(ends)
    starts[:, 0] = line_starts[take]
    starts[:, 1:] = ends[:, :-1] + 1
    last = ends[:, -1]
    ends[:, -1] = last - ((last > starts[:, -1]) & (a[np.maximum(last - 1, 0)] == _CR))  # "\r\n" line ends
    widths = ends - starts
    pad = max(int(widths[:, [*text, *numbers]].max(initial=0)), 1) if len(ends) else 1
    padded = np.concatenate([np.zeros(pad, dtype=np.uint8), a, np.zeros(pad, dtype=np.uint8)])
    for j in text:
        w = widths[:, j]
        rows.text[j] = np.char.strip(_cut(padded, pad, starts[:, j], w, right=False).view(
            f"S{max(int(w.max(initial=0)), 1)}").reshape(-1))
    for j in numbers:
        rows.numbers[j] = _cut(padded, pad, starts[:, j], widths[:, j], right=True)
        rows.widths[j] = widths[:, j]
    return rows, len(line_ends)


def _cut(padded: np.ndarray, pad: int, starts: np.ndarray, widths: np.ndarray, *, right: bool) -> np.ndarray:
    """The fields ``padded[pad + starts[i] :][: widths[i]]`` as a zero-padded ``(n, W)`` matrix.

    ``padded`` has ``pad`` (>= every width) zero bytes before and after the data. Row ``i`` of a
    sliding-window view starts at byte ``i``: fancy-indexing it copies each field and its neighbours
    in one step; the neighbours are then zeroed. ``right``: each field ends at column W.
    """
    width = max(int(widths.max(initial=0)), 1)
    first = pad + starts + widths - width if right else pad + starts  # the window's start in `padded`
    m = np.lib.stride_tricks.sliding_window_view(padded, width)[first]
    cols = np.arange(width)[None, :]
    keep = (cols >= width - widths[:, None]) if right else (cols < widths[:, None])
    np.multiply(m, keep, out=m)
    return m


def _right_align(left: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """A left-aligned, zero-padded matrix, right-aligned."""
    n, width = left.shape
    if not n:
        return left
    padded = np.concatenate([np.zeros(width, dtype=np.uint8), left.reshape(-1), np.zeros(width, dtype=np.uint8)])
    return _cut(padded, width, np.arange(n) * width, widths, right=True)


def _csv_module_rows(body: bytes, ncols: int, text: list[int], numbers: list[int], line0: int,
                     chunk_rows: int = 65536) -> Iterator[Rows]:
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = line0 + body.count(b"\n", 0, exc.start)
        raise CsvError(f"cannot read as UTF-8 text (line {line}: {exc.reason})", line) from None
    reader = csv.reader(io.StringIO(decoded, newline=""))
    wanted = [*text, *numbers]
    lines: list[int] = []
    fields: dict[int, list[bytes]] = {j: [] for j in wanted}
    ragged = None
    for row in reader:
        line = line0 + reader.line_num - 1
        if not row or all(not v.strip() for v in row):
            continue
        if len(row) != ncols:
            if ragged is None:
                ragged = (line, len(row))
            continue
        lines.append(line)
        for j in wanted:
            fields[j].append(row[j].encode("utf-8"))
        if len(lines) == chunk_rows:
            yield _rows_from_lists(lines, fields, text, numbers, ragged)
            lines, fields, ragged = [], {j: [] for j in wanted}, None
    if lines or ragged is not None:
        yield _rows_from_lists(lines, fields, text, numbers, ragged)


def _rows_from_lists(lines: list[int], fields: dict[int, list[bytes]], text: list[int], numbers: list[int],
                     ragged: tuple[int, int] | None) -> Rows:
    rows = Rows(lines=np.array(lines, dtype=np.int64), ragged=ragged)
    for j in [*text, *numbers]:
        # (NUL bytes inside a field would be lost by numpy's bytes dtype: no CSV writer emits them.)
        s = np.array(fields[j], dtype=np.bytes_) if fields[j] else np.zeros(0, dtype="S1")
        if j in text:
            rows.text[j] = np.char.strip(s)
        else:
            left = s.view(np.uint8).reshape(len(s), s.dtype.itemsize)
            rows.widths[j] = np.char.str_len(s).astype(np.int64)
            rows.numbers[j] = _right_align(left, rows.widths[j])
    return rows


# ---------------------------------------------------------------------------------------------- numbers
def field_text(m: np.ndarray, row: int) -> str:
    """One field of a right-aligned number matrix as the text it was in the file."""
    return bytes(m[row]).lstrip(b"\0").decode("utf-8", errors="replace")


def parse_numbers(m: np.ndarray, widths: np.ndarray | None = None, *,
                  single: bool = False) -> tuple[np.ndarray, int | None]:
    """The right-aligned fields of ``m`` (lengths ``widths``) as ``float()`` parses them, and the first
    row that is no number.

    ``single``: the caller stores float32; a value within two float64 ulps of the exact one is kept
    where its float32 rounding is certain to equal that of ``float()``'s result.
    """
    n = len(m)
    values = np.zeros(n)
    todo = np.ones(n, dtype=bool)
    if n and m.shape[1]:
        if widths is None:
            widths = np.where(m.any(1), m.shape[1] - (m != 0).argmax(1), 0)
        for tier in (_parse_fixed, _parse_decimal):
            rows = np.flatnonzero(todo)
            if not len(rows):
                break
            every = len(rows) == n
            v, exact, near = tier(m if every else m[rows], widths if every else widths[rows])
            if single:
                maybe = np.flatnonzero(near & ~exact)
                exact[maybe[_same_float32(v[maybe])]] = True
            values[rows[exact]] = v[exact]
            todo[rows[exact]] = False
    bad = None
    for row in np.flatnonzero(todo):
        try:
            values[row] = float(field_text(m, int(row)))
        except ValueError:
            bad = int(row)
            break
    return values, bad


def _same_float32(v: np.ndarray) -> np.ndarray:
    """Whether every float64 within two ulps of ``v`` rounds to the same float32 as ``v``."""
    with np.errstate(invalid="ignore", over="ignore"):
        f = v.astype(np.float32)
        lo = np.nextafter(np.nextafter(v, -np.inf), -np.inf).astype(np.float32)
        hi = np.nextafter(np.nextafter(v, np.inf), np.inf).astype(np.float32)
    return (lo == f) & (hi == f)


_U = np.uint64
_ASCII_ZERO = _U(0x3030303030303030)
_NIBBLE_HI = _U(0xF0F0F0F0F0F0F0F0)
_SIX = _U(0x0606060606060606)
_LOW7 = _U(0x7F7F7F7F7F7F7F7F)
_HIGH = _U(0x8080808080808080)
_POW10_INT = np.array([10**i for i in range(17)], dtype=np.uint64)


def _clear_byte(words: np.ndarray, position: np.ndarray, where: np.ndarray) -> None:
    """Set byte ``position[i]`` (0-15) of row ``i`` of the ``(n, 2)`` little-endian words to 0 where ``where``."""
    shift = (_U(8) * (position % 8).astype(np.uint64))
    mask = ~(_U(0xFF) << shift)
    all_ones = ~_U(0)
    words[:, 0] &= np.where(where & (position < 8), mask, all_ones)
    words[:, 1] &= np.where(where & (position >= 8), mask, all_ones)


def _byte(words: np.ndarray, position: np.ndarray) -> np.ndarray:
    shift = (_U(8) * (position % 8).astype(np.uint64))
    return (np.where(position < 8, words[:, 0], words[:, 1]) >> shift) & _U(0xFF)


def _parse_fixed(m: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tier 1: ``[+-]digits[.digits]`` of at most 16 characters, eight digits per 64-bit operation.

    The last 16 bytes of each field are two little-endian words (the first character in the lowest
    byte). The dot and the sign are cleared, the zero bytes (padding) become ``'0'``, the digits are
    checked and combined eight at a time; the digits on either side of the dot are put together
    again with one integer division.
    """
    n, width = m.shape
    r = np.zeros((n, 16), dtype=np.uint8)
    r[:, 16 - min(width, 16):] = m[:, -16:]
    values = np.zeros(n)
    exact = np.zeros(n, dtype=bool)
    valid = np.zeros(n, dtype=bool)
    first_dot = np.flatnonzero(r[0] == ord("."))
    k0 = 15 - int(first_dot[-1]) if len(first_dot) else -1
    if (k0 >= 0 and (r[:, 15 - k0] == ord(".")).all()) or (k0 < 0 and not (r == ord(".")).any()):
        groups = [(k0, slice(None))]  # a fixed-format column: the dot in the same place in every row
    else:
        decimals = np.full(n, -1, dtype=np.int64)  # digits after the dot; -1: no dot
        for k in range(15):
            decimals[r[:, 15 - k] == ord(".")] = k
        groups = [(int(k), np.flatnonzero(decimals == k)) for k in np.unique(decimals)]
    all_words = r.view("<u8")  # (n, 2)
    for k, rows in groups:
        words = all_words[rows].copy() if isinstance(rows, np.ndarray) else all_words
        w = widths[rows]
        count = len(words)
        if k >= 0:
            _clear_byte(words, np.full(count, 15 - k), np.ones(count, dtype=bool))
        first = np.clip(16 - w, 0, 15)  # the field's first character
        head = _byte(words, first)
        neg = head == ord("-")
        signed = neg | (head == ord("+"))
        _clear_byte(words, first, signed)
        zero_bytes = ~(((words & _LOW7) + _LOW7) | words) & _HIGH  # 0x80 in each zero byte
        words |= (zero_bytes >> _U(7)) * _U(0x30)
        bad = ((words & _NIBBLE_HI) ^ _ASCII_ZERO) | (((words + _SIX) & _NIBBLE_HI) ^ _ASCII_ZERO)
        ok = ((bad[:, 0] | bad[:, 1]) == 0) & (w - signed - (k >= 0) >= 1) & (w <= 16)
        # Eight ASCII digits (first character in the lowest byte) to their value, in three steps.
        v = words & _U(0x0F0F0F0F0F0F0F0F)
        v = (v * _U(2561)) >> _U(8)
        v = ((v & _U(0x00FF00FF00FF00FF)) * _U(6553601)) >> _U(16)
        v = ((v & _U(0x0000FFFF0000FFFF)) * _U(42949672960001)) >> _U(32)
        mant = v[:, 0] * _U(100_000_000) + v[:, 1]  # the dot counted as a 0 digit
        if k >= 0:  # digits left of the dot sit one place too high
            mant = (mant // _POW10_INT[k + 1]) * _POW10_INT[k] + mant % _POW10_INT[k]
        x = mant.astype(np.float64)
        if k > 0:
            x = x / _POW10[k]
        values[rows] = np.where(neg, -x, x)
        exact[rows] = ok & (mant < _U(_TWO53))
        valid[rows] = ok  # (only a 16-digit integer passes 2**53: float64 rounds it once, correctly)
    return values, exact, valid


def _parse_decimal(m: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tier 2: any ``[+-]digits[.digits][(e|E)[+-]digits]``, one character position at a time."""
    n, width = m.shape
    start = width - widths  # first character of each field
    digit = m - np.uint8(48)  # wraps around for bytes below '0'
    is_digit = digit < 10
    values = np.zeros(n)
    state = np.zeros(n, dtype=np.int8)  # 0 sign allowed, 1 mantissa, 2 after the dot, 3 after e, 4 exponent
    ok = widths > 0
    neg = np.zeros(n, dtype=bool)
    exp_neg = np.zeros(n, dtype=bool)
    mant = np.zeros(n, dtype=np.int64)
    scale = np.zeros(n, dtype=np.int64)
    significant = np.zeros(n, dtype=np.int64)
    truncated = np.zeros(n, dtype=bool)
    mant_digits = np.zeros(n, dtype=np.int64)
    expo = np.zeros(n, dtype=np.int64)
    exp_digits = np.zeros(n, dtype=np.int64)
    for j in range(width):
        c = m[:, j]
        active = j >= start
        if not active.any():
            continue
        d = digit[:, j].astype(np.int64)
        dig = active & is_digit[:, j]
        sign = active & ((c == ord("+")) | (c == ord("-")))
        dot = active & (c == ord("."))
        e = active & ((c | 32) == ord("e"))
        in_mant = dig & (state <= 2)
        take = in_mant & (significant < _MAX_DIGITS)
        mant = np.where(take, mant * 10 + d, mant)
        significant += take & (mant > 0)
        scale -= take & (state == 2)
        drop = in_mant & ~take
        scale += drop & (state <= 1)
        truncated |= drop & (d > 0)
        mant_digits += in_mant
        in_exp = dig & (state >= 3)
        expo = np.where(in_exp, expo * 10 + d, expo)
        exp_digits += in_exp
        ok &= ~(sign & (state != 0) & (state != 3)) & ~(dot & (state > 1)) & ~(e & ((state > 2) | (mant_digits == 0)))
        ok &= ~(active & ~(dig | sign | dot | e))
        neg |= sign & (state == 0) & (c == ord("-"))
        exp_neg |= sign & (state == 3) & (c == ord("-"))
        state = np.where(sign & (state == 0), 1, state)
        state = np.where(sign & (state == 3), 4, state)
        state = np.where(dig & (state == 0), 1, state)
        state = np.where(dig & (state == 3), 4, state)
        state = np.where(dot, 2, state)
        state = np.where(e, 3, state)
    ok &= (mant_digits > 0) & ((state != 3) & ((state != 4) | (exp_digits > 0))) & (exp_digits <= 4)
    k = scale + np.where(exp_neg, -expo, expo)
    small = np.abs(k) <= 22
    power = _POW10[np.minimum(np.abs(k), 22)]
    x = mant.astype(np.float64)
    x = np.where(k >= 0, x * power, x / power)
    values = np.where(neg, -x, x)
    zero = ok & (mant == 0)
    exact = (ok & small & ~truncated & (mant < _TWO53)) | zero
    near = ok & small
    return values, exact, near
