"""The training loop: AdamW, warm-up + cosine, clipping, bf16 on GPU, DDP, exact resume.

Exactness: batch ``k`` of epoch ``e`` depends on ``(seed, e)`` only, every augmentation of
``(seed, e, sample)``, and the global torch RNG (dropout) is re-seeded from ``(seed, step,
rank)`` before every step. So a run resumed from any checkpoint repeats the uninterrupted run's
steps (with as many CPU threads), and N ranks with batch B/N see one rank's batch B.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from spool.claims import RENEW_EVERY_S, Claim, lock_directory, refresh_claim, release_claim
from spool.data.cache import CachedTokenDataset
from spool.data.dataset import report_skipped, worker_context, worker_init_fn
from spool.data.frame_cache import FrameTokenDataset
from spool.distributed import (
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup_distributed,
    on_rank0,
    setup_distributed,
)
from spool.errors import TrainingDivergedError
from spool.io_utils import atomic_write
from spool.models.weights import WEIGHTS_NAME, check_and_load_state_dict
from spool.train import builders, resume_settings
from spool.train import checkpoint as ckpt
from spool.train import signals as stopping
from spool.train.config import TrainConfig
from spool.train.evaluate import autocast_context, model_inputs
from spool.train.metrics import STEP_FIELDS, append_csv, json_text, plot_curves, rewrite_csv
from spool.train.tasks import METRICS_REVISION, TASKS

logger = logging.getLogger(__name__)
T = TypeVar("T")
LOCK_NAME = ".spool-train.lock"


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


class Trainer:
    """Builds everything a :class:`TrainConfig` describes; :meth:`fit` trains.

    Rank 0 writes ``out_dir``: ``steps.csv`` (loss per step), ``metrics.csv`` (per epoch),
    ``tb/`` (TensorBoard), ``curves.png``, ``checkpoints/step_*`` and, at the end, ``model/``
    (``load_classifier``-able) and ``results.json``.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.info = setup_distributed(cfg.device)
        self.device = self.info.device
        world, rank = self.info.world_size, self.info.rank
        if cfg.batch_size % world:
            raise ValueError(f"batch_size: the global batch ({cfg.batch_size}) must be "
                             f"divisible by the number of processes ({world})")
        self.local_batch = cfg.batch_size // world
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.task = TASKS[cfg.task]
        gone = builders.init_gone(cfg)  # since the run began: its checkpoint holds the model
        resumed = ckpt.resume_candidate(cfg.resume, cfg.out_dir) if gone else None
        config = builders.model_config(cfg, resumed)
        self.train_set, self.val_set, self.class_names = self.task.build(cfg, config)
        self.cached = isinstance(self.train_set, (CachedTokenDataset, FrameTokenDataset))
        self.skipped: set[str] = set()  # unreadable training videos reported so far
        built = cfg if resumed is None else dataclasses.replace(cfg, init=None)
        self.model = self.task.model(built, config, self.class_names).to(self.device)
        # How training frames were sampled: the default of evaluation and extraction.
        self.model.config.sampling = self.task.sampling(self.train_set)
        self.module: torch.nn.Module = self.model
        if self.info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            with warnings.catch_warnings():  # torch 2.13: a warning per run, no successor yet
                warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated")
                self.module = DistributedDataParallel(self.model, device_ids=ids,
                                                      broadcast_buffers=False)
        self.optimizer = builders.build_optimizer(self.model, cfg)
        self.steps_per_epoch = len(builders.epoch_batches(len(self.train_set), self.local_batch,
                                                          world, rank, cfg.seed, 0))
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch_size: {cfg.batch_size} is larger than the training set "
                             f"({len(self.train_set)} videos over {world} processes)")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        warmup = min(round(cfg.warmup_epochs * self.steps_per_epoch), self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, builders.warmup_cosine(warmup, self.total_steps, cfg.min_lr_ratio))
        if cfg.warmup_epochs > 0 and warmup >= self.total_steps:
            self.log(f"note: the warm-up ({cfg.warmup_epochs} epochs) lasts the whole run "
                     f"({cfg.epochs}): the learning rate never decays", logging.WARNING,
                     always=True)
        self.step = self.epoch = self.step_in_epoch = 0
        self.tracker = self.task.tracker(len(self.class_names))
        self.history: list[dict[str, Any]] = []
        self.out = Path(cfg.out_dir)
        self.tb = None
        self._signals: stopping.StopSignals | None = None  # while fit runs
        self._lock: Claim | None = None
        self.resumed: dict[str, Any] | None = None  # rank 0: resume_settings.check_resume's
        try:
            on_rank0(self.info.is_main, self._lock_out_dir)
            resume = self._find_resume()
            if resume is not None:
                self._resume(*resume)
                if cfg.resume != "auto":  # once taken: a refused resume moves nothing
                    path, step = resume[0], resume[1]["step"]  # N becomes the run's history
                    note = on_rank0(self.info.is_main, lambda: ckpt.set_aside_later_checkpoints(
                        self.out, path, step))
                    if note is not None:
                        self.log(note, logging.WARNING, always=True)
            elif cfg.resume == "auto":  # a typo in --out-dir would otherwise go unnoticed
                self.log(f"no checkpoint in {self.out / ckpt.CHECKPOINT_DIR}: starting from "
                         "scratch", logging.WARNING, always=True)
            if self.info.is_main:
                self._open_logs()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run directory (``fit`` does this when it ends) and TensorBoard."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self._lock is not None:
            release_claim(self._lock)
            self._lock = None
        self._signals = None
        self.module = self.model  # DDP holds the process group: it must go before the group

    def _lock_out_dir(self) -> None:
        """Hold ``out_dir``: a second run into it would mix steps.csv and overwrite model/."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = lock_directory(self.out, "training run", LOCK_NAME)
        self._lock_renewed = time.monotonic()

    def log(self, message: str, level: int = logging.INFO, always: bool = False) -> None:
        """Rank 0 logs ``message``; progress (not ``always``) is silenced by ``quiet``."""
        if self.info.is_main and (always or not self.cfg.quiet):
            logger.log(level, f"[{self.cfg.name}] {message}" if self.cfg.name else message)

    def _open_logs(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        resume_settings.record_settings(self.out, self.cfg, self.resumed)
        rewrite_csv(self.out / "steps.csv", STEP_FIELDS, lambda r: int(r["step"]) <= self.step)
        rewrite_csv(self.out / "metrics.csv", self.task.epoch_fields, rows=self.history)
        if self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tb"), purge_step=self.step + 1)

    def _find_resume(self) -> tuple[Path, dict[str, Any]] | None:
        """The checkpoint ``cfg.resume`` names and its state. Rank 0 chooses (and tidies up
        after a crash); the other ranks load its choice, so all resume from the same step."""
        cfg = self.cfg
        if not cfg.resume:
            resume_settings.refuse_earlier_run(self.out, cfg.resume)
            return None

        def choose() -> tuple[Path, dict[str, Any]] | None:
            ckpt.recover_checkpoints(self.out)  # safe: this run holds the directory
            found = ckpt.resolve_resume(cfg.resume, cfg.out_dir)
            resume_settings.refuse_earlier_run(self.out, cfg.resume, found)
            if found is not None:  # a change of model or task is refused before anything
                builders.check_resumed_backbone(self.model, found[1]["weights"], cfg, found[0])
                self.resumed = resume_settings.check_resume(*found, cfg, self.model.config,
                                                            self.info.world_size, self.device)
            return found

        found = on_rank0(self.info.is_main, choose)
        choice = broadcast_object(None if found is None else str(found[0]))
        if self.info.is_main or choice is None:
            return found
        return Path(choice), ckpt.load_checkpoint(Path(choice), self.info.rank)

    def _resume(self, path: Path, state: dict[str, Any]) -> None:
        check_and_load_state_dict(self.model, state["weights"], str(path / WEIGHTS_NAME))
        decays = [group["weight_decay"] for group in self.optimizer.param_groups]
        builders.regroup_as_saved(self.optimizer, self.model, self.cfg, state["optimizer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        ckpt.check_epochs_left(path, self.epoch, self.step_in_epoch, self.cfg.epochs)
        old_batch = state["config"].get("batch_size", self.cfg.batch_size)
        if old_batch != self.cfg.batch_size:  # positions in batches of the old size
            self.step_in_epoch, self.scheduler.last_epoch = ckpt.position_in_new_batches(
                self.epoch, self.step_in_epoch, old_batch, self.cfg.batch_size,
                self.steps_per_epoch)
        ckpt.apply_hyperparameters(self.optimizer, self.scheduler, self.cfg.lr, decays)
        self.history = self.task.restore_history(state)
        if self.info.is_main:  # the checkpoint holds the sum over ranks
            self.tracker.load_state_dict(state["tracker"])
        if (rng := state["rng"]) is not None:
            ckpt.restore_rng(rng["tensors"], rng["python"], rng["numpy"])
        if self.resumed is not None and (message := resume_settings.note(self.resumed)):
            self.log(message, always=True)
        end = f"the end of epoch {self.epoch}" if self.epoch and not self.step_in_epoch else ""
        self.log(f"resumed from {path} at step {self.step} ({end or f'epoch {self.epoch + 1}'})")

    def checkpoint_path(self) -> Path:  # the current step's
        return self.out / ckpt.CHECKPOINT_DIR / f"step_{self.step:08d}"

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step_<step>`` (rank 0 writes; every rank gives its RNG)."""
        summed = self.task.tracker(len(self.class_names))
        summed.load_state_dict(self.tracker.state_dict())
        summed.all_reduce()
        rngs = all_gather_objects(ckpt.capture_rng())
        path = None
        if self.info.is_main:
            state = {"step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                     "scheduler": self.scheduler.state_dict(), "tracker": summed.state_dict(),
                     "history": self.history, "metrics_revision": METRICS_REVISION,
                     "class_names": self.class_names, "config": self.cfg.to_saved_dict(),
                     "world_size": self.info.world_size,
                     "threads": resume_settings.cpu_threads(self.device)}
            path = self.checkpoint_path()
            ckpt.save_checkpoint(path, self.model, self.optimizer, state, rngs, update=True)
            ckpt.prune_checkpoints(self.out, self.cfg.keep_checkpoints)
        barrier()
        return path

    # ----------------------------------------------------------------------------- training
    def _loader(self) -> DataLoader:
        batches = builders.epoch_batches(len(self.train_set), self.local_batch,
                                         self.info.world_size, self.info.rank, self.cfg.seed,
                                         self.epoch)
        self.train_set.set_epoch(self.epoch)
        # Token batches are slices of a memory map: worker processes would only add overhead.
        workers = 0 if self.cached else self.cfg.num_workers
        return DataLoader(self.train_set, batch_sampler=batches[self.step_in_epoch:],
                          collate_fn=self.task.collate,
                          num_workers=workers, worker_init_fn=worker_init_fn,
                          multiprocessing_context=worker_context(workers),
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.cfg.seed + self.epoch))

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimizer step on a local batch; returns the global batch's mean loss."""
        torch.manual_seed(step_seed(self.cfg.seed, self.step, self.info.rank))
        inputs = model_inputs(batch, self.device)
        labels = batch["label" if "label" in batch else "labels"].to(self.device)
        self.module.train()
        with autocast_context(self.device, self.cfg.amp):
            loss, logits, count = self.task.loss(self, inputs, labels)
        # A rank's loss is the mean over its samples (frames: their number differs per rank)
        # and DDP averages ranks: each weighs by its share (one reduction: count, loss sum).
        sums = all_reduce_sum(torch.stack([torch.tensor(float(count)),
                                           loss.detach().float().cpu() * count]))
        total = max(float(sums[0]), 1.0)
        lr = self.optimizer.param_groups[0]["lr"]
        if not torch.isfinite(sums[1]):  # the same sum on every rank: all stop here
            raise TrainingDivergedError.at(self.step + 1, float(sums[1]) / total, lr)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * (count * self.info.world_size / total)).backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.cfg.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.step_in_epoch += 1
        self.tracker.update(logits, labels, float(loss.detach()) * count)
        return {"loss": float(sums[1]) / total, "lr": lr, "grad_norm": float(norm)}

    def _end_epoch(self, seconds: float) -> dict[str, Any]:
        last = self.epoch + 1 == self.cfg.epochs
        val = {}  # first: a stop in it checkpoints the epoch's tracker, not yet summed
        if self.val_set is not None and ((self.epoch + 1) % self.cfg.eval_every == 0 or last):
            val = self.evaluate()
        self.tracker.all_reduce()
        lr = builders.last_step_lr(self.scheduler)  # by its count, which may differ from step's
        row: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step, "lr": lr,
                               **self.task.train_row(self.tracker), "epoch_seconds": seconds,
                               **val}
        self.history.append(row)
        if self.info.is_main:
            append_csv(self.out / "metrics.csv", self.task.epoch_fields, row)
            if self.tb is not None:
                for key, value in row.items():
                    if key not in ("epoch", "step"):
                        self.tb.add_scalar(key.replace("_", "/", 1), value, self.epoch + 1)
                self.tb.flush()
            plot_curves({self.cfg.name or self.out.name: self.history}, self.out / "curves.png",
                        *self.task.accuracy)  # (metric, label, scale)
        self.log(f"epoch {self.epoch + 1}/{self.cfg.epochs}: {self.task.describe(row)} "
                 f"({seconds:.1f}s)")
        self.epoch += 1
        self.step_in_epoch = 0
        self.tracker = self.task.tracker(len(self.class_names))
        return row

    def evaluate(self) -> dict[str, float]:
        """Validation metrics of the current model (all ranks take part), as ``val_*``."""
        return self.task.evaluate(self)

    def batches(self, loader: Iterable[T]) -> Iterator[T]:
        """``loader``'s batches; in :meth:`fit`, until a stop signal the ranks agree on (a
        checkpoint, then :class:`~spool.train.signals.TrainingInterrupted`)."""
        if self._signals is None:
            return iter(loader)
        return stopping.until_stopped(loader, self._signals, self._checkpoint_or_stop, self.device)

    def fit(self) -> list[dict[str, Any]]:
        """Train to the last epoch (or ``stop_after_steps``): the epoch rows; frees the run."""
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        if self.epoch >= cfg.epochs:
            done = ckpt.results_written(self.out, self.step)  # else stopped before them
            self.log(f"run already finished at step {self.step}; " + ("nothing to do" if done
                     else "writing the model/ and results.json it stopped before"), always=True)
            if not done:
                self.finish(checkpoint=False)
            return self.history
        if cfg.stop_after_steps is not None and self.step >= cfg.stop_after_steps:
            self.log(f"already at step {self.step} (stop_after_steps): nothing to do", always=True)
            return self.history
        self.log(f"training {type(self.model).__name__} on {len(self.train_set)} "
                 f"{'cached token' if self.cached else 'video'} samples, {self.info.world_size}"
                 f" process(es) on {resume_settings.device_said(self.device)}, "
                 f"{self.steps_per_epoch} steps/epoch x {cfg.epochs} epochs")
        with stopping.StopSignals() as signals:
            self._signals = signals
            while self.epoch < cfg.epochs:
                start = time.perf_counter()
                for batch in self.batches(self._loader()):
                    report_skipped(batch.get("skipped", ()), self.skipped)
                    self._record_step(self.train_step(batch))
                    if self._checkpoint_or_stop(None):  # one due; stop_after_steps
                        return self.history
                if self.epoch + 1 == cfg.epochs and self.val_set is not None:
                    self.save_checkpoint()  # kept if validation fails; a resume redoes it
                with stopping.stop_on_failure(signals, self._checkpoint_or_stop):
                    self._end_epoch(time.perf_counter() - start)
                signum = stopping.agreed_stop(signals.received, self.device)  # in the epoch's end
                if signum and self.epoch < cfg.epochs:
                    self._checkpoint_or_stop(signum)  # saves, so the next one is not repeated
                if not cfg.save_every and self.epoch < cfg.epochs:  # a kill -9 keeps epochs
                    self.save_checkpoint()
            self.finish()
        return self.history

    def _record_step(self, out: dict[str, float]) -> None:
        if self._lock is not None and time.monotonic() - self._lock_renewed > RENEW_EVERY_S:
            refresh_claim(self._lock)  # a heartbeat: other machines judge the lock by its age
            self._lock_renewed = time.monotonic()
        if self.info.is_main:
            row = {"step": self.step, "epoch": self.epoch + 1, **out}
            append_csv(self.out / "steps.csv", STEP_FIELDS, row)
            if self.tb is not None:
                self.tb.add_scalar("train/step_loss", out["loss"], self.step)
                self.tb.add_scalar("train/lr", out["lr"], self.step)
        if self.step % self.cfg.log_every == 0:
            self.log(f"  step {self.scheduler.last_epoch}/{self.total_steps} "
                     f"loss {out['loss']:.4f} lr {out['lr']:.2e}")

    def _checkpoint_or_stop(self, signum: int | None) -> bool:
        """Checkpoint when one is due; True when the run stops here (``stop_after_steps``).
        After a stop signal (``signum``): checkpoint, then raise :class:`TrainingInterrupted`."""
        cfg = self.cfg
        stop = cfg.stop_after_steps is not None and self.step >= cfg.stop_after_steps
        if (cfg.save_every and self.step % cfg.save_every == 0) or stop or signum:
            self.save_checkpoint()
        if signum:
            message = (f"interrupted at step {self.step}; checkpoint saved to "
                       f"{self.checkpoint_path()}; resume with --resume auto")
            self.log(message, logging.WARNING, always=True)
            raise stopping.TrainingInterrupted(signum, message)
        if stop:
            self.log(f"stopped after step {self.step}; resume with --resume auto")
        return stop

    def finish(self, checkpoint: bool = True) -> None:
        """Final checkpoint, ``model/`` and ``results.json``."""
        if checkpoint:
            self.save_checkpoint()  # replaces a step checkpoint taken before the epoch's end
        if self.info.is_main:
            self.model.save_pretrained(self.out / "model")
            text = json_text({"final": self.history[-1] if self.history else {},  # NaN: null
                              "class_names": self.class_names, "steps": self.step})
            atomic_write(self.out / "results.json", lambda p: Path(p).write_text(text))
        barrier()


def train(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Run :class:`Trainer` for ``cfg``; returns the per-epoch metric rows."""
    return Trainer(cfg).fit()


def run_training(cfg: TrainConfig) -> list[dict[str, Any]]:
    """:func:`train`, then leave the torch.distributed process group (``torchrun`` jobs)."""
    try:
        return train(cfg)
    finally:
        cleanup_distributed()
