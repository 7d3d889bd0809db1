"""Run logging: ``metrics.jsonl`` rows, TensorBoard scalars (and optionally W&B) and progress (a tqdm
bar on a terminal, plain lines in a log file).

Only rank 0 logs; on other ranks :class:`MetricsLog` and :class:`Progress` are silent no-ops, so the
trainer calls them unconditionally.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .atomic_write import atomic_write_text

__all__ = ["MetricsLog", "Progress", "peak_memory_mb"]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MB: ``torch.cuda.max_memory_allocated`` on GPU, the process max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is kilobytes on Linux, bytes on macOS.
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def json_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep the row valid
    return value


class MetricsLog:
    """Append metric rows to ``metrics.jsonl`` and, optionally, TensorBoard.

    Parameters
    ----------
    output_dir : str or Path
        The run folder; ``metrics.jsonl`` and ``tensorboard/`` go there.
    enabled : bool
        ``False`` on ranks other than 0.
    tensorboard : bool
        Also write TensorBoard event files.
    sinks : sequence
        More destinations of the same numbers, each with ``log(step, kind, values)`` and ``close()``
        (:class:`manifold_align_train.wandb_log.WandbLog`).
    """

    def __init__(self, output_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True,
                 sinks: Sequence = ()):
        self.enabled = enabled
        self.sinks = list(sinks)
        self.path = Path(output_dir) / "metrics.jsonl"
        self.tensorboard_dir = Path(output_dir) / "tensorboard" if tensorboard else None
        self._writer = None
        self._logged: set[tuple[int, str]] = set()  # (step, kind) rows in the file
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir))

    def _rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in rows))
        self._logged = {(row.get("step", 0), row.get("kind", "train")) for row in rows}

    def truncate_after(self, step: int) -> None:
        """Drop rows with ``step`` greater than ``step`` (a resumed run repeats those steps)."""
        if self.enabled and self.path.exists():
            self._rewrite([row for row in self._rows() if row.get("step", 0) <= step])

    def log(self, step: int, metrics: dict[str, Any], *, kind: str = "train") -> None:
        """Write the row ``{"step": step, "kind": kind, **metrics}``; numbers go to TensorBoard (and the sinks)
        under ``kind/name``. A file holds one row per step and kind: a second row for the same pair (the
        evaluation of a resumed run that had nothing left to train) replaces the first."""
        if not self.enabled:
            return
        row = {"step": step, "kind": kind, **{k: json_value(v) for k, v in metrics.items()}}
        if (step, kind) in self._logged:
            self._rewrite([old if (old.get("step"), old.get("kind")) != (step, kind) else row
                           for old in self._rows()])
        else:
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            self._logged.add((step, kind))
        numbers = {name: value for name, value in row.items()
                   if name not in ("step", "kind") and isinstance(value, (int, float))}
        if self._writer is not None:
            for name, value in numbers.items():
                self._writer.add_scalar(f"{kind}/{name}", value, step)
        for sink in self.sinks:
            sink.log(step, kind, numbers)

    def close(self) -> None:
        """Flush and close the TensorBoard writer and the other sinks."""
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()


class Progress:
    """Progress over optimizer steps (rank 0): a tqdm bar on a terminal, plain lines elsewhere.

    On a terminal (or in a notebook) a tqdm bar shows loss, learning rate, temperature scale and
    samples/s. When the stream is not a terminal (a scheduler's log file, ``| tee``), a bar would write
    one carriage-return update per step into a single line, so each log step writes one plain line
    instead, as open_clip's trainer logs::

        train step 20/100 (20%) loss 2.3026 lr 1.000e-03 scale 14.3 samples/s 812 elapsed 00:12 eta 00:48

    Parameters
    ----------
    total : int
        The last optimizer step (``train.steps``).
    initial : int
        The step the run starts from (a resumed run's checkpoint step).
    enabled : bool
        ``False`` on ranks other than 0 and with ``log.progress=false``.
    file : file object, optional
        Where to write; default ``sys.stderr`` (looked up when the progress is created).
    """

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True, file=None):
        self._bar = None
        self._lines = None  # the stream of plain lines, when it is not a terminal
        if not enabled:
            return
        from tqdm import autonotebook
        from tqdm.auto import tqdm
        from tqdm.std import tqdm as console_tqdm

        file = sys.stderr if file is None else file
        notebook = autonotebook.tqdm is not console_tqdm  # tqdm.auto's widget writes no carriage returns
        if notebook or _isatty(file):
            self._bar = tqdm(total=total, initial=initial, desc="train", unit="step",
                             dynamic_ncols=True, file=file)
        else:
            self._lines, self._format_interval = file, console_tqdm.format_interval
            self._total, self._step, self._initial = total, initial, initial
            self._start = time.monotonic()

    def update(self, n: int, *, loss: float | None = None, lr: float | None = None,
               scale: float | None = None, samples_per_second: float | None = None) -> None:
        """Advance ``n`` steps; with numbers (the trainer passes them at its log steps), show them."""
        if self._bar is not None:
            if loss is not None:
                self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", scale=f"{scale:.3g}",
                                      samples_s=f"{samples_per_second:.0f}", refresh=False)
            self._bar.update(n)
        elif self._lines is not None:
            self._step += n
            if loss is not None:
                self._lines.write(self._line(loss, lr, scale, samples_per_second) + "\n")
                self._lines.flush()  # a log file is read while the run goes on

    def _line(self, loss: float, lr: float, scale: float, samples_per_second: float) -> str:
        elapsed = time.monotonic() - self._start
        done = self._step - self._initial
        eta = elapsed / done * (self._total - self._step) if done > 0 else float("nan")
        fmt = self._format_interval
        return (f"train step {self._step}/{self._total} ({100 * self._step / max(self._total, 1):.0f}%) "
                f"loss {loss:.4f} lr {lr:.3e} scale {scale:.3g} samples/s {samples_per_second:.0f} "
                f"elapsed {fmt(elapsed)} eta {fmt(eta) if math.isfinite(eta) else '?'}")

    def close(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._lines = None


def _isatty(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
