"""Convert the JapaneseVowels ``.ts`` files into the compact file bundled with rnndrop.

Run once, offline, by a maintainer (the result is committed; nothing downloads at run time)::

    pip download --no-deps sktime==1.2.0 -d /tmp/sk
    cd /tmp/sk && unzip -q sktime-1.2.0-py3-none-any.whl 'sktime/datasets/data/JapaneseVowels/*'
    python scripts/convert_japanese_vowels.py /tmp/sk/sktime/datasets/data/JapaneseVowels \\
        src/rnndrop/datasets/japanese_vowels.npz

The output is a compressed ``.npz`` with the variable-length sequences stored back to back (no padding):

* ``train_values`` ``(sum of train lengths, 12)`` float32, ``train_lengths`` ``(270,)`` int16,
  ``train_labels`` ``(270,)`` int8 (speaker 1..9 stored as 0..8);
* the same three arrays with the ``test_`` prefix (370 sequences);
* ``class_names`` the original label strings ``'1'`` … ``'9'``.

The ``.ts`` format (sktime / UEA archive): ``#`` comments and ``@`` header lines, then after ``@data``
one case per line, its dimensions separated by ``:``, each dimension a comma-separated series, and the
class label as the last ``:`` field.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def read_ts(path: Path) -> tuple[list[np.ndarray], list[str]]:
    """Read a multivariate ``.ts`` file: a list of ``(time, channels)`` float64 arrays and their labels."""
    cases: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if line.lower() == "@data":
                in_data = True
            continue
        *dims, label = line.split(":")
        series = [np.array([float(v) for v in d.split(",")]) for d in dims]
        if len({len(s) for s in series}) != 1:
            raise ValueError(f"{path}:{lineno}: dimensions of one case have different lengths")
        cases.append(np.stack(series, axis=1))
        labels.append(label.strip())
    return cases, labels


def convert(src_dir: Path, out: Path) -> None:
    arrays: dict[str, np.ndarray] = {}
    class_names: list[str] | None = None
    for split in ("train", "test"):
        cases, labels = read_ts(src_dir / f"JapaneseVowels_{split.upper()}.ts")
        if class_names is None:
            class_names = sorted(set(labels), key=int)
        index = {c: i for i, c in enumerate(class_names)}
        arrays[f"{split}_values"] = np.concatenate(cases).astype(np.float32)
        arrays[f"{split}_lengths"] = np.array([len(c) for c in cases], dtype=np.int16)
        arrays[f"{split}_labels"] = np.array([index[label] for label in labels], dtype=np.int8)
        print(f"{split}: {len(cases)} cases, lengths {min(map(len, cases))}-{max(map(len, cases))}, "
              f"{cases[0].shape[1]} channels")
    arrays["class_names"] = np.array(class_names)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src_dir", type=Path, help="folder holding JapaneseVowels_{TRAIN,TEST}.ts")
    parser.add_argument("out", type=Path, help="output .npz path")
    args = parser.parse_args()
    convert(args.src_dir, args.out)


if __name__ == "__main__":
    main()
