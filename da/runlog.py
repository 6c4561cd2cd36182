"""What a run reports while it trains: log.csv (the source of truth), optional TensorBoard, progress, run.log.

- :class:`MetricLog` keeps one row per epoch and rewrites ``log.csv`` atomically after each epoch; with
  ``trainer.tensorboard=true`` it also writes per-step losses and per-epoch metrics to ``<run>/tensorboard``.
- :class:`Progress` is a tqdm bar on a terminal and one log line per epoch otherwise (a file, a cluster job's
  output), so a non-interactive log holds no carriage-return updates.
- :func:`log_to_run_folder` sends the ``da`` logger's messages to ``<run>/run.log`` (and to the terminal when
  nothing else prints them, e.g. in a notebook) for the duration of a run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import sys
from collections.abc import Iterator

from da.errors import ConfigError
from da.runfolder import write_text

log = logging.getLogger("da")

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] %(message)s"


class MetricLog:
    """Per-epoch rows for ``log.csv`` (+ TensorBoard scalars when ``tensorboard`` is on)."""

    def __init__(self, run_dir: str, tensorboard: bool = False, write: bool = True) -> None:
        self.path = os.path.join(run_dir, "log.csv")
        self.enabled = write  # False: rows are kept, nothing is written (a torchrun rank other than 0)
        self.rows: list[dict[str, float]] = []
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ConfigError(
                    "trainer.tensorboard=true needs the tensorboard package: pip install 'da[tensorboard]'"
                ) from err
            self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def step(self, step: int, values: dict[str, float]) -> None:
        """Per-step scalars (TensorBoard only; log.csv has per-epoch means)."""
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def append(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        self.write()
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("epoch", "step") and isinstance(value, int | float):
                    self.writer.add_scalar(f"epoch/{key}", value, row["epoch"])
            self.writer.flush()

    def write(self) -> None:
        if not self.enabled:
            return
        keys: list[str] = []
        for row in self.rows:
            keys += [k for k in row if k not in keys]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buffer.getvalue())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Progress:
    """A tqdm bar on a terminal, else one line per epoch through the ``da`` logger; nothing when disabled."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str, epochs: int) -> None:
        self.enabled, self.total, self.epochs = enabled, total, epochs
        self.bar = None
        if enabled and sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, leave=True)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            log.info(text)

    def step(self, n: int = 1, loss: float | None = None) -> None:
        """``n`` more steps done; ``loss``: the last one's (the trainer reads losses every few steps)."""
        if self.bar is not None:
            self.bar.update(n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def epoch_end(self, epoch: int, step: int, shown: dict[str, float | None]) -> None:
        values = {k: v for k, v in shown.items() if v is not None}
        if self.bar is not None:
            self.bar.set_postfix(**{k: f"{v:.3f}" for k, v in values.items()})
        elif self.enabled:
            parts = " ".join(f"{k} {v:.3f}" for k, v in values.items())
            log.info(f"epoch {epoch}/{self.epochs} step {step}/{self.total} {parts}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _writes_file(handler: logging.Handler, path: str) -> bool:
    return isinstance(handler, logging.FileHandler) and os.path.abspath(handler.baseFilename) == path


def _is_console(handler: logging.Handler) -> bool:
    return type(handler) is logging.StreamHandler and getattr(handler, "stream", None) in (
        sys.stdout,
        sys.stderr,
        sys.__stdout__,
        sys.__stderr__,
    )


@contextlib.contextmanager
def log_to_run_folder(run_dir: str) -> Iterator[None]:
    """Within the block, the ``da`` logger writes to ``<run_dir>/run.log`` and reaches a console.

    Under the CLI, Hydra's job logging already writes run.log and the terminal; nothing is added then.
    """
    path = os.path.abspath(os.path.join(run_dir, "run.log"))
    handlers = logging.getLogger().handlers + log.handlers
    added: list[logging.Handler] = []
    if not any(_writes_file(h, path) for h in handlers):
        file_handler = logging.FileHandler(path)
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        added.append(file_handler)
    if not any(_is_console(h) for h in handlers):
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        added.append(console)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    for handler in added:
        log.addHandler(handler)
    try:
        yield
    finally:
        for handler in added:
            log.removeHandler(handler)
            handler.close()
