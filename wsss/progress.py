"""One policy for progress output: live bars on a terminal, periodic plain lines otherwise.

A redirected stream (``train.log`` under Hydra, SLURM / submitit output files, CI logs) must not
receive carriage-return frames: one 60-image evaluation used to be a single multi-kilobyte line.
When the stream is not a TTY:

- :class:`tqdm` (use it instead of ``tqdm.tqdm``) prints ``desc: n/total (pct) elapsed, rate``
  as a whole line at most every ``WSSS_PROGRESS_INTERVAL`` seconds (default 30) and at the end;
- Lightning's progress bar is switched off and :class:`PlainProgress` logs one line per epoch
  with the logged metrics (:func:`trainer_kwargs`).

``WSSS_PROGRESS=bar`` forces bars, ``lines`` forces plain lines, ``off`` silences both.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import lightning as L
from tqdm import tqdm as _tqdm

log = logging.getLogger("wsss.progress")


def mode(stream: Any = None) -> str:
    """``bar``, ``lines`` or ``off``: ``WSSS_PROGRESS`` if set, else ``bar`` on a TTY."""
    forced = os.environ.get("WSSS_PROGRESS", "").strip().lower()
    if forced in ("bar", "lines", "off"):
        return forced
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def interval_s() -> float:
    return float(os.environ.get("WSSS_PROGRESS_INTERVAL", "30"))


class tqdm(_tqdm):  # a drop-in for tqdm.tqdm, hence the name
    """``tqdm.tqdm`` that writes periodic whole lines instead of frames when not on a TTY."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._plain = mode(kwargs.get("file")) != "bar"
        if self._plain:
            self._quiet = mode(kwargs.get("file")) == "off" or kwargs.get("disable", False)
            self._last_line = time.monotonic()
            kwargs["disable"] = False
            kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 (closed in close())
            kwargs["mininterval"] = 0.0
            kwargs["miniters"] = 1
        super().__init__(*args, **kwargs)

    def _line(self) -> str:
        total = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        elapsed = self.format_dict["elapsed"]
        rate = self.n / elapsed if elapsed > 0 else 0.0
        return f"{self.desc or 'progress'}: {self.n}{total}{pct} {elapsed:.0f}s, {rate:.2f} it/s"

    def display(self, msg: str | None = None, pos: int | None = None) -> None:
        if not self._plain:
            return super().display(msg, pos)
        now = time.monotonic()
        if not self._quiet and now - self._last_line >= interval_s():
            self._last_line = now
            log.info(self._line())
        return None

    def close(self) -> None:
        if not getattr(self, "_plain", False) or getattr(self, "disable", True):
            return super().close()
        done = not self._quiet and self.n > 0
        line = self._line() if done else None
        devnull = self.fp
        super().close()
        if line:
            log.info("%s done", line)
        devnull.close()
        return None


class PlainProgress(L.Callback):
    """One log line per finished training epoch with the epoch's logged metrics."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
        log.info("epoch %d/%d%s", trainer.current_epoch + 1, trainer.max_epochs,
                 f": {shown}" if shown else "")


def trainer_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``L.Trainer`` arguments with the progress policy applied (unless the caller set it)."""
    if "enable_progress_bar" in kwargs or mode(sys.stdout) == "bar":
        return kwargs
    out = dict(kwargs, enable_progress_bar=False)
    if mode(sys.stdout) == "lines":
        out["callbacks"] = [*list(out.get("callbacks") or []), PlainProgress()]
    return out
