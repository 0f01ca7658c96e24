"""Progress of ``rnndrop compare``: bars on a terminal, one plain line per finished trial elsewhere.

Bars (tqdm, on stderr) redraw themselves with carriage returns and cursor-movement escapes, which
fill a log file with thousands of lines when the output is redirected (CI, nohup, a notebook's
log). So they are drawn only when stderr is a terminal; otherwise each finished trial prints one
readable line to stdout, e.g. ``trial 3/26 done: final keras_both rate 0.3 seed 0, test accuracy 0.962, 12.4 s``.
``--no-progress`` turns both off. Without tqdm (the ``cli`` extra) a terminal gets the lines too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # closed or unusual streams
        return False


class Progress:
    """``mode``: ``"bars"`` (stderr is a terminal), ``"lines"`` (it is not) or ``"off"`` (``--no-progress``)."""

    def __init__(self, total: int, done: int, *, enabled: bool, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        err = err if err is not None else sys.stderr
        self.mode = "off" if not enabled else "bars" if _is_terminal(err) else "lines"
        self.total, self.done = total, done
        self._overall: Any = None
        self._bar: Any = None
        if self.mode == "bars":
            try:
                from tqdm.auto import tqdm
            except ImportError:  # the cli extra is not installed: plain lines instead of bars
                self.mode = "lines"
                return
            self._tqdm = tqdm
            self._overall = tqdm(total=total, initial=done, desc="all trials", unit="trial", position=0, file=err)
            self._err = err

    def start_run(self, what: str, epochs: int) -> Callable[[int, dict[str, float]], None]:
        """Begin a trial described by ``what``; returns the ``on_epoch(epoch, stats)`` callback for the trainer."""
        if self.mode != "bars":
            return lambda epoch, stats: None
        if self._bar is not None:
            self._bar.close()
        bar = self._tqdm(total=epochs, desc=what, unit="ep", leave=False, position=1, file=self._err)
        self._bar = bar

        def on_epoch(epoch: int, stats: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix(val_loss=f"{stats['val_loss']:.3f}", val_acc=f"{stats['val_accuracy']:.3f}")

        return on_epoch

    def finish_run(self, what: str, result: str, seconds: float) -> None:
        """A trial described by ``what`` finished with ``result`` (e.g. ``"test accuracy 0.962"``)."""
        self.done += 1
        if self.mode == "bars":
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self._overall.update(1)
        elif self.mode == "lines":
            print(f"trial {self.done}/{self.total} done: {what}, {result}, {seconds:.1f} s", file=self.out, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._overall is not None:
            self._overall.close()
