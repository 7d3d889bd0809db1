"""The training loop: optimizer steps, precision, non-finite losses, checkpoints, the whole job.

:func:`train` is the whole job (what ``manifold-align train`` runs); :class:`Trainer` holds the
pieces so that tests can drive single steps. The pieces are built in :mod:`manifold_align_train.builders`,
evaluated in :mod:`manifold_align_train.evaluation` and summed up in :mod:`manifold_align_train.run_summary`.
One optimizer step consumes ``train.accumulation`` batches; the learning rate, the temperature schedule,
checkpoints and logs all count optimizer steps. With ``train.accumulation_mode=exact`` (the default) the step has
the gradient of one batch of all those pairs (GradCache, Gao et al. 2021: :meth:`Trainer._exact_step`).
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from manifold_align.clip import trim_padding

from . import checkpoint as ckpt
from .builders import (
    autocast_for,
    build_data_bundle,
    build_loss,
    build_model,
    build_optimizer,
    configure_torch,
    lr_factor,
)
from .config import RunConfig, config_to_dict, dump_config
from .distributed_env import DistEnv, cleanup_distributed, collective_timeout, init_distributed
from .evaluation import evaluate
from .faults import FailureReport, claim_failure, explain
from .metrics_log import MetricsLog, Progress, peak_memory_mb
from .preemption import Preempted, StopRequest
from .rng import replayed, rng_state, seed_everything, set_rng_state, torch_rng_state
from .run_summary import format_report, geometry_values, run_summary, write_json

__all__ = ["NonFiniteLossError", "Trainer", "train"]


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) became NaN or Inf and ``train.skip_nonfinite`` is off."""


@dataclass
class Counters:
    """Running totals kept in checkpoints."""

    samples: int = 0
    skipped_samples: int = 0  # every encounter of a bad sample, on all ranks
    bad_samples: list = field(default_factory=list)  # the distinct ones, by name (see _sync_bad_samples)
    nonfinite_steps: int = 0
    train_seconds: float = 0.0
    last_checkpoint: str | None = None


class Trainer:
    """All the state of one training run on one process.

    Parameters
    ----------
    cfg : RunConfig
        Validated configuration.
    output_dir : str or Path
        The run folder (``config.yaml``, ``metrics.jsonl``, ``tensorboard/``, ``checkpoints/``,
        ``summary.json``).
    env : DistEnv, optional
        From :func:`manifold_align_train.distributed_env.init_distributed`; default: one CPU/GPU process.
    """

    def __init__(self, cfg: RunConfig, output_dir: str | Path, *, env: DistEnv | None = None):
        self.cfg = cfg
        self.env = env or init_distributed(cfg.train.device)
        self.device = self.env.device
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = self.output_dir / ckpt.CHECKPOINT_DIR
        seed_everything(cfg.seed)
        self.model, self.tokenizer, self.transforms = build_model(cfg, self.device)
        self.data = build_data_bundle(cfg, self.env, self.tokenizer, self.transforms)
        self.forward_model = self._wrap_model()
        self.loss_fn = build_loss(self.model, cfg, self.env)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.precision == "fp16")
        self.step = 0
        self.counters = Counters()
        self.last_metrics: dict[str, Any] = {}
        self._skipped_here = 0  # this rank's bad-sample encounters not yet in counters.skipped_samples
        self._validated = False  # the loss checks its inputs on this process's first step
        self.stop_request = StopRequest(cfg.train.preempt_signal)  # installed by train() around fit()
        self.stop_agreed = False  # some rank was signalled: every rank stops after this step (_finite_flag)
        # Different ranks draw different dropout/augmentation noise; model init was already equal.
        seed_everything(cfg.seed + 1000 * self.env.rank + 1)

    # -- construction ------------------------------------------------------------------------
    def _wrap_model(self) -> torch.nn.Module:
        model = self.model
        if self.cfg.train.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if self.env.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        if self.cfg.train.compile:
            model = torch.compile(model)
        return model

    # -- one optimizer step --------------------------------------------------------------------
    def _autocast(self):
        return autocast_for(self.cfg.train.precision, self.device)()

    def _set_lr(self) -> float:
        factor = lr_factor(self.step, warmup=self.cfg.train.warmup, total=self.cfg.train.steps,
                           min_ratio=self.cfg.train.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.cfg.train.lr * factor

    def _micro_step(self, batch, n_micro: int, sync: bool, validate: bool):
        images = batch.images.to(self.device, non_blocking=True)
        texts = batch.texts.to(self.device, non_blocking=True)
        no_sync = getattr(self.forward_model, "no_sync", None)
        context = no_sync() if (not sync and no_sync is not None) else nullcontext()
        with context:
            with self._autocast():
                out = self.forward_model(image=images, text=texts)
                result = self.loss_fn(out["image_features"], out["text_features"], out["logit_scale"],
                                      out.get("logit_bias"), validate=validate)
            self.scaler.scale(result.loss / n_micro).backward()
        return result, images.shape[0]

    def _gradients(self, batches: list, validate: bool) -> tuple[list, int]:
        """Back-propagate the step's loss over ``batches`` into the parameters' ``.grad``; return the loss outputs
        (one for the exact mode, one per micro-batch for ``independent``) and the number of pairs."""
        if len(batches) > 1 and self.cfg.train.accumulation_mode == "exact":
            result, samples = self._exact_step(batches, validate)
            return [result], samples
        results, samples = [], 0
        for i, batch in enumerate(batches):
            result, n = self._micro_step(batch, len(batches), sync=i == len(batches) - 1, validate=validate)
            results.append(result)
            samples += n
        return results, samples

    def _exact_step(self, batches: list, validate: bool):
        """One contrastive loss over every micro-batch of the step, its gradient back-propagated micro-batch by
        micro-batch (GradCache, Gao et al. 2021).

        1. Encode each micro-batch without a graph, recording the torch generators first.
        2. The loss of the concatenated features (this process's A x B pairs, gathered across processes by the
           loss as for one batch) and its gradient with respect to the features, the logit scale and bias and
           the geometry's parameters that the loss reads itself (lorentz's curvature in the scores).
        3. Re-encode each micro-batch with a graph under its recorded generators (the same dropout and patch
           dropout), and back-propagate ``<feature gradient, features>`` of its slice. The last re-run adds the
           scale's, bias's and geometry's loss gradients to its backward, and alone synchronizes under DDP
           (``no_sync`` on the others), so that DDP reduces every gradient once.

        Activation memory is one micro-batch's; the features of all of them are held (2 x A x B x k x d values).
        The towers run twice (two forwards, one backward per micro-batch). A module whose forward updates state
        (BatchNorm statistics) updates it twice; the towers here have none.

        Returns the loss's :class:`~manifold_align.ContrastiveLossOutput` and the number of pairs.
        """
        encoded, states, inputs = [], [], []
        for batch in batches:
            images = batch.images.to(self.device, non_blocking=True)
            texts = batch.texts.to(self.device, non_blocking=True)
            states.append(torch_rng_state(self.device))
            with torch.no_grad(), self._autocast():
                out = self.forward_model(image=images, text=texts)
            encoded.append((out["image_features"], out["text_features"]))
            inputs.append((images, texts))
        # the parameters behind scale and bias are the same in every micro-batch: one value, one gradient
        leaves = {"image": torch.cat([e[0] for e in encoded]).requires_grad_(),
                  "text": torch.cat([e[1] for e in encoded]).requires_grad_()}
        for key in ("logit_scale", "logit_bias"):
            if out.get(key) is not None:
                leaves[key] = out[key].detach().requires_grad_()
        geometry_params = [p for p in self.loss_fn.geometry.parameters() if p.requires_grad]
        with self._autocast():
            result = self.loss_fn(leaves["image"], leaves["text"], leaves["logit_scale"], leaves.get("logit_bias"),
                                  validate=validate)
        grads = torch.autograd.grad(result.loss, [*leaves.values(), *geometry_params], allow_unused=True)
        grad = dict(zip(leaves, grads))
        param_grads = grads[len(leaves):]
        sizes = [e[0].shape[0] for e in encoded]
        image_grads, text_grads = grad["image"].split(sizes), grad["text"].split(sizes)
        no_sync = getattr(self.forward_model, "no_sync", None)
        for i, (images, texts) in enumerate(inputs):
            last = i == len(inputs) - 1
            with (no_sync() if not last and no_sync is not None else nullcontext()):
                with replayed(states[i], self.device), self._autocast():
                    out = self.forward_model(image=images, text=texts)
                surrogate = (out["image_features"] * image_grads[i]).sum() + (out["text_features"] * text_grads[i]).sum()
                if last:
                    for key in ("logit_scale", "logit_bias"):
                        if grad.get(key) is not None:
                            surrogate = surrogate + (out[key] * grad[key]).sum()
                    for p, g in zip(geometry_params, param_grads):
                        if g is not None:
                            surrogate = surrogate + (p * g).sum()
                self.scaler.scale(surrogate).backward()
        return result, sum(sizes)

    def _finite_flag(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """1.0 where the loss (and, without fp16's scaler, the gradient norm) is finite on every rank; on the
        device, no host read. Every rank must take the same branch, or the next collective deadlocks.

        The flag also carries the stop request (:mod:`manifold_align_train.preemption`), as 2.0 added while no
        rank is stopping, so that every rank learns after the same step that one was signalled, in the same
        all-reduce and the same host read; :meth:`_read_flag` takes it apart."""
        # fp16 overflow is the scaler's business (it skips the step); a non-finite *loss* is not
        finite = torch.isfinite(loss) if self.scaler.is_enabled() else torch.isfinite(loss) & torch.isfinite(grad_norm)
        flags = torch.stack([finite.float(), torch.ones_like(loss, dtype=torch.float32)])
        if self.stop_request.pending:
            flags[1] = 0.0
        if self.env.distributed:
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)  # MIN: finite everywhere, and no rank stopping
        return flags[0] + 2.0 * flags[1]

    def _read_flag(self, value: float) -> bool:
        """Whether the step is finite on every rank, from :meth:`_finite_flag`'s value read on the host; sets
        ``stop_agreed``."""
        self.stop_agreed = value < 2.0
        return value in (1.0, 3.0)

    def train_step(self, batches: list, *, read_metrics: bool = True) -> dict[str, Any]:
        """Run one optimizer step over ``batches`` (``train.accumulation`` of them).

        One host read of the device per step (the finite flag) when ``read_metrics`` is False; with it, the
        flag, the loss and every diagnostic come in one transfer. The loss validates its inputs (finite, on the
        geometry's space) on this process's first step and whenever the metrics are read.

        Parameters
        ----------
        batches : list of Batch
        read_metrics : bool, default True, keyword-only
            Read the loss and diagnostics to the host (the training loop does at log steps only).

        Returns
        -------
        dict
            ``finite``, ``samples``, ``skipped`` always; with ``read_metrics`` also ``loss``, ``lr``,
            ``temperature``, ``contrastive_loss``, ``positive_similarity``, ``negative_similarity``, ``gap``,
            ``grad_norm`` and the geometry's extra terms (``entailment_loss``: before its weight) as floats.

        Raises
        ------
        NonFiniteLossError
            On a NaN/Inf loss when ``train.skip_nonfinite`` is off; nothing has been updated.
        """
        self.forward_model.train()
        self.model.temperature.set_step(self.step)
        lr = self._set_lr()
        validate = read_metrics or not self._validated
        self._validated = True
        self.optimizer.zero_grad(set_to_none=True)
        results, samples = self._gradients(batches, validate)
        loss = torch.stack([r.loss.detach().float() for r in results]).mean()
        grad_norm = self._clip_gradients().float()
        flag = self._finite_flag(loss, grad_norm)
        metrics: dict[str, Any] = {"samples": samples * self.env.world_size,
                                   "skipped": sum(int(getattr(b, "n_skipped", 0)) for b in batches)}
        if read_metrics:
            diagnostics = {name: torch.stack([r.diagnostics()[name].float() for r in results]).mean()
                           for name in results[0].diagnostics()}
            read = dict(zip(["finite", "loss", "grad_norm", *diagnostics],
                            torch.stack([flag, loss, grad_norm, *diagnostics.values()]).tolist()))
            metrics.update(read, lr=lr)
            finite = self._read_flag(read["finite"])
        else:
            finite = self._read_flag(flag.item())
        metrics["finite"] = finite
        if finite:
            self.scaler.step(self.optimizer)
            self.model.clamp_()  # temperature and geometry: keeps the optimizer's view of them in range
        # always, after unscale_: a skipped step must still reset the scaler, or the next unscale_ raises
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not finite and "loss" not in metrics:
            metrics.update(zip(("loss", "grad_norm"), torch.stack([loss, grad_norm]).tolist()))
        return metrics

    def _clip_gradients(self) -> torch.Tensor:
        """Clip (``train.grad_clip``) and return the total gradient norm before clipping, 0-dim, on the device."""
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip is not None else float("inf")
        if not params:
            return torch.zeros((), device=self.device)
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    # -- checkpoints ---------------------------------------------------------------------------
    def _sync_bad_samples(self) -> None:
        """Add the distinct bad samples every rank's loader met to ``counters.bad_samples`` (collective)."""
        mine = sorted(self.data.train.bad_sources)
        names = [mine]
        if self.env.distributed:
            names = [None] * self.env.world_size
            dist.all_gather_object(names, mine)
        self.counters.bad_samples = sorted(set(self.counters.bad_samples).union(*names))

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit (collective in DDP)."""
        self._sync_bad_samples()
        self._sync_skipped()
        rng = [rng_state()]
        if self.env.distributed:
            rng = [None] * self.env.world_size
            dist.all_gather_object(rng, rng_state())
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "lr_schedule": {"step": self.step, "warmup": self.cfg.train.warmup,
                            "total": self.cfg.train.steps, "peak_lr": self.cfg.train.lr},
            "rng": rng,
            "data_position": tuple(self.data.train.position()),
            "counters": vars(self.counters).copy(),
            "config": config_to_dict(self.cfg),
            "world_size": self.env.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (model, optimizer, scaler, step, RNG, data position)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.counters = Counters(**state["counters"])
        rng = state["rng"]
        if self.env.rank < len(rng):
            set_rng_state(rng[self.env.rank])
        else:
            # a process the checkpoint has no state for (the job grew): a stream of its own, like every rank's
            seed_everything(self.cfg.seed + 1000 * self.env.rank + 1 + 7919 * self.step)
        self.data.train.set_position(*state["data_position"])
        saved_world_size = state.get("world_size", len(rng))
        if saved_world_size != self.env.world_size and self.env.is_main:
            print(f"resuming a checkpoint written by {saved_world_size} process(es) with {self.env.world_size}: "
                  "the data continue exactly (batches are global, each process takes its slice); each process "
                  "continues its own saved random state, a process without one starts a fresh one",
                  file=sys.stderr, flush=True)

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0) unless the parameters are non-finite."""
        for name, param in self.model.named_parameters():
            if not bool(torch.isfinite(param).all()):
                raise NonFiniteLossError(
                    f"parameter {name!r} is non-finite at step {self.step}; not writing a "
                    f"checkpoint (last good checkpoint: {self.counters.last_checkpoint})"
                )
        state = self.state_dict()  # collective in DDP: every rank takes part
        path = None
        if self.env.is_main:
            path = ckpt.checkpoint_path(self.checkpoint_dir, self.step)
            state["counters"]["last_checkpoint"] = str(path)
            ckpt.save_checkpoint(state, self.checkpoint_dir, self.step,
                                 keep=self.cfg.train.keep_checkpoints)
        self.counters.last_checkpoint = str(ckpt.checkpoint_path(self.checkpoint_dir, self.step))
        return path

    # -- the loop ------------------------------------------------------------------------------
    def _batches(self) -> Iterator:
        """Training batches, forever, with the padding columns no caption uses cut off (exact, and short captions
        run fewer positions); the length is read on the CPU, where the loader leaves the tokens, not on the device."""
        while True:  # the loader advances its epoch at the end of each pass
            for batch in self.data.train:
                yield batch._replace(texts=trim_padding(batch.texts))

    def _nonfinite(self, metrics: dict[str, Any]) -> None:
        if not self.cfg.train.skip_nonfinite:
            raise NonFiniteLossError(
                f"non-finite loss ({metrics['loss']}) or gradient norm ({metrics['grad_norm']}) at "
                f"step {self.step}; stopping. The last good checkpoint is "
                f"{self.counters.last_checkpoint or '(none written yet)'}; set "
                f"train.skip_nonfinite=true to skip such steps instead"
            )
        self.counters.nonfinite_steps += 1

    def evaluate(self) -> dict[str, float]:
        """Zero-shot top-1/top-5 and retrieval R@K on the held-out data, streamed in ``eval.batch_size``
        batches by rank 0 alone; the other ranks wait in a broadcast of its result (collective), so every
        rank returns the same metrics and rank 0's failure stops every rank."""
        outcome: list = [None, None, None]  # metrics, bad held-out pairs, rank 0's error
        if self.env.is_main:
            try:
                outcome[0] = evaluate(self.model, self.tokenizer, self.data, batch_size=self.cfg.eval.batch_size,
                                      workers=self.cfg.data.workers,
                                      autocast=autocast_for(self.cfg.train.precision, self.device),
                                      prototype=self.cfg.eval.prototype)
            except Exception as error:
                if not self.env.distributed:
                    raise
                outcome[2] = f"{type(error).__name__}: {error}"
                dist.broadcast_object_list(outcome, src=0)
                raise
            outcome[1] = getattr(self.data.retrieval, "bad", None)
        if self.env.distributed:
            dist.broadcast_object_list(outcome, src=0)
            if outcome[2] is not None:
                raise RuntimeError(f"the evaluation on rank 0 failed: {outcome[2]}")
            if outcome[1] is not None:
                self.data.retrieval.bad = outcome[1]
        return outcome[0]

    def fit(self, log: MetricsLog, progress: Progress) -> dict[str, Any]:
        """Train until ``train.steps``; return the final evaluation metrics."""
        cfg = self.cfg
        batches = self._batches()
        window_start, window_samples = time.perf_counter(), 0
        while self.step < cfg.train.steps:
            tic = time.perf_counter()
            group = [next(batches) for _ in range(cfg.train.accumulation)]
            log_step = (self.step + 1) % cfg.log.every == 0 or self.step + 1 == cfg.train.steps
            metrics = self.train_step(group, read_metrics=log_step)
            if log_step:
                self.last_metrics = metrics
            self.counters.train_seconds += time.perf_counter() - tic
            if not metrics["finite"]:
                self._nonfinite(metrics)
                log.log(self.step, {"nonfinite_loss": metrics["loss"],
                                    "nonfinite_steps": self.counters.nonfinite_steps}, kind="skip")
            self.step += 1
            self.counters.samples += metrics["samples"]
            self._skipped_here += metrics["skipped"]
            window_samples += metrics["samples"]
            if log_step:
                rate = window_samples / max(time.perf_counter() - window_start, 1e-9)
                progress.update(1, loss=metrics["loss"], lr=metrics["lr"], scale=metrics["temperature"],
                                samples_per_second=rate)
                self._log_train(log, metrics, rate)
                window_start, window_samples = time.perf_counter(), 0
            else:
                progress.update(1)
            if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.train.steps:
                log.log(self.step, self.evaluate(), kind="eval")
            if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                self.save_checkpoint()
            if self.stop_agreed:
                self._stop_preempted(log)
        if self.counters.last_checkpoint != str(ckpt.checkpoint_path(self.checkpoint_dir, self.step)):
            self.save_checkpoint()
        self._sync_bad_samples()
        self._sync_skipped()
        final = self.evaluate()
        log.log(self.step, final, kind="eval")
        return final

    def _stop_preempted(self, log: MetricsLog) -> None:
        """Write the checkpoint of this step (unless it was just written), log a ``stop`` row and raise
        :class:`Preempted`."""
        path = ckpt.checkpoint_path(self.checkpoint_dir, self.step)
        if self.counters.last_checkpoint != str(path):
            self.save_checkpoint()  # collective: every rank is here, after the same step
        if self.env.distributed:
            dist.barrier()  # no rank exits (and closes its connections) before rank 0's file is complete
        name = self.stop_request.received or "a stop signal to another process"
        log.log(self.step, {"signal": name, "checkpoint": str(path)}, kind="stop")
        raise Preempted(name, self.step, path)

    def _sync_skipped(self) -> None:
        """Add the bad-sample encounters of every rank since the last call to ``counters.skipped_samples``.

        Collective in DDP; called where the count is read (log rows, checkpoints, the end), at the same steps
        on every rank, instead of an all-reduce and a host sync every step.
        """
        total = self._skipped_here
        if self.env.distributed:
            reduced = torch.tensor(float(total), device=self.device)
            dist.all_reduce(reduced)
            total = int(reduced.item())
        self.counters.skipped_samples += int(total)
        self._skipped_here = 0

    def _log_train(self, log: MetricsLog, metrics: dict[str, Any], rate: float) -> None:
        self._sync_skipped()
        row = {key: value for key, value in metrics.items() if key not in ("finite", "samples", "skipped")}
        # the geometry's learned values (lorentz: curvature, image_scale, text_scale), like the temperature
        row.update({f"geometry_{name}": value for name, value in geometry_values(self.model.geometry).items()})
        row.update(samples_per_second=rate, peak_memory=peak_memory_mb(self.device),
                   skipped_samples=self.counters.skipped_samples,
                   nonfinite_steps=self.counters.nonfinite_steps)
        log.log(self.step, row, kind="train")


# -- the job -----------------------------------------------------------------------------------------
def default_output_dir(cfg: RunConfig) -> Path:
    """``runs/<name>`` or ``runs/<YYYYmmdd-HHMMSS>``."""
    return Path("runs") / (cfg.name or time.strftime("%Y%m%d-%H%M%S"))


def _agree_output_dir(output_dir: str | Path | None, cfg: RunConfig, env: DistEnv) -> Path:
    # Rank 0 picks the folder (a timestamp may differ between processes) and tells the others.
    choice = [str(output_dir or default_output_dir(cfg))]
    if env.distributed:
        dist.broadcast_object_list(choice, src=0)
    return Path(choice[0])


def train(cfg: RunConfig, output_dir: str | Path | None = None, *,
          resume_state: dict[str, Any] | None = None, resume_path: str | Path | None = None) -> dict:
    """Run a whole training job (one process of it under torchrun).

    Parameters
    ----------
    cfg : RunConfig
        Validated configuration.
    output_dir : str or Path, optional
        Run folder; default ``runs/<cfg.name or timestamp>``.
    resume_state : dict, optional
        A loaded checkpoint to continue from.
    resume_path : str or Path, optional
        Where ``resume_state`` came from (recorded in the summary).

    Returns
    -------
    dict
        The summary written to ``summary.json``.
    """
    start = time.perf_counter()
    env = init_distributed(cfg.train.device, timeout=cfg.train.collective_timeout)
    restore_torch = configure_torch(cfg, env)
    trainer = None
    try:
        output = _agree_output_dir(output_dir, cfg, env)
        ckpt.check_run_folder(output, None if resume_state is None else int(resume_state["step"]))
        trainer = Trainer(cfg, output, env=env)
        if resume_state is not None:
            trainer.load_state_dict(resume_state)
            if trainer.step >= cfg.train.steps and env.is_main:
                print(f"manifold-align train: the checkpoint is at step {trainer.step} and train.steps is "
                      f"{cfg.train.steps}: nothing to train, evaluating it (raise train.steps, e.g. --set "
                      f"train.steps={2 * trainer.step}, to train on)", file=sys.stderr, flush=True)
        if env.is_main:
            # created only now: a run that fails while being built leaves no folder behind
            output.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, output / "config.yaml")
        sinks = []
        if env.is_main and cfg.log.wandb:
            from .wandb_log import WandbLog

            sinks.append(WandbLog(output, cfg))
        log = MetricsLog(output, enabled=env.is_main, tensorboard=cfg.log.tensorboard, sinks=sinks)
        log.truncate_after(trainer.step)  # a killed run may have logged past its last checkpoint
        progress = Progress(cfg.train.steps, trainer.step, enabled=env.is_main and cfg.log.progress)
        try:
            with trainer.stop_request:  # SIGTERM and train.preempt_signal stop at a step boundary
                final = trainer.fit(log, progress)
        finally:
            progress.close()
            log.close()
        summary = run_summary(trainer, final, time.perf_counter() - start, resume_path)
        if env.is_main:
            write_json(summary, output / "summary.json")
            print(format_report(summary), flush=True)
        return summary
    except Preempted:
        raise
    except Exception as error:
        # before the process group goes (finally): the ranks whose collectives fail because of this one
        # must find the failure claimed (manifold_align_train.faults)
        failure = explain(error, step=None if trainer is None else trainer.step,
                          last_checkpoint=None if trainer is None else trainer.counters.last_checkpoint)
        if env.distributed:
            wait = collective_timeout(cfg.train.collective_timeout, "nccl" if env.device.type == "cuda" else "gloo")
            failure.failure_report = FailureReport(env.rank, env.world_size, None if trainer is None else trainer.step,
                                                   first=claim_failure(env),
                                                   timeout=None if wait is None else wait.total_seconds())
        if failure is error:
            raise
        raise failure from error
    finally:
        restore_torch()
        cleanup_distributed()
