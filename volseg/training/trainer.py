"""The training loop behind ``volseg train``.

One run folder holds everything: ``config.yaml`` (fully resolved), ``splits.json``,
``last.pt`` (every epoch, with the training state for ``--resume``), ``best.pt`` (best
mean validation Dice on the validation cases carved from the fold's training cases, or the
last epoch without them), ``metrics.csv``, ``curves.png`` and ``tensorboard/``. The fold's
held-out cases are never seen here: only ``volseg evaluate-run`` predicts them.

Data order and augmentation are a function of (seed, epoch, rank) (see volseg.data.loader),
the GPU's generator is reseeded from them every epoch, and the CPU RNG states, optimiser and
gradient scaler are restored on resume, so in deterministic CPU mode an interrupted and resumed
run ends with the same weights as an uninterrupted one. The determinism / cudnn flags a run sets
hold only while it trains (:func:`volseg.runtime.training_flags`); ``runtime.json`` records the
process-wide settings in effect.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader

from volseg.bundled import resolve_model
from volseg.checkpoint import (
    build_checkpoint,
    capture_rng_state,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
)
from volseg.config import Config, dump_config
from volseg.data.datasets import find_cases
from volseg.data.label_space import LabelSpace
from volseg.data.loader import resolve_num_workers, seed_for, training_loader
from volseg.data.splits import carve_validation, load_folds, make_folds, save_folds, split_for_fold
from volseg.data.training_fingerprint import fingerprint_images
from volseg.data.transforms import items_from_cases, make_dataset, training_transforms, validation_transforms
from volseg.errors import ConfigError, OutputExistsError, TrainingError
from volseg.io.atomic import remove_stale_temporaries, write_text
from volseg.losses import DeepSupervisionLoss, loss_from_config
from volseg.nn import SegmentationNetwork, create_model
from volseg.runtime import describe as describe_runtime
from volseg.runtime import training_flags
from volseg.training import distributed
from volseg.training.optim import LearningRateSchedule, build_optimizer
from volseg.training.preflight import check_training_config, output_channels
from volseg.training.run_log import RunLog
from volseg.training.validation import validate

logger = logging.getLogger(__name__)

CONFIG_FILE, SPLITS_FILE, LAST, BEST = "config.yaml", "splits.json", "last.pt", "best.pt"


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    epochs_run: int
    best_metric: float | None
    best_epoch: int | None
    history: list[dict[str, Any]]


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``auto`` is bf16 on CUDA (fp16 where bf16 is missing), fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp32":
        return None
    if device.type == "cpu":
        logger.warning(
            "training.precision=%s on the CPU: autocast is usually slower than fp32 on CPUs without "
            "bf16/fp16 instructions",
            precision,
        )
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def build_network(config: Config, in_channels: int) -> SegmentationNetwork:
    """The configured network (gradient checkpointing from ``training`` when the network has it)."""
    options = dict(config.network.options)
    if config.training.gradient_checkpointing:
        options["gradient_checkpointing"] = True
    return create_model(
        config.network.name, config.network.spatial_dims, in_channels, output_channels(config), **options
    )


def initialise_from(network: SegmentationNetwork, source: str) -> None:
    """Load the network weights of checkpoint ``source`` (a path or a bundled model's name) into
    ``network``, which must be the same network (:class:`CheckpointError` names what differs)."""
    checkpoint = load_checkpoint(resolve_model(source))
    load_weights(network, checkpoint["state_dict"], f"training.init_weights={source!r} does not fit this network")
    logger.info("network weights initialised from %s", source)


def untrained_parameters(config: Config, in_channels: int, loss: torch.nn.Module) -> list[str]:
    """Names of the network's parameters that ``loss`` never reaches in training: the heads a
    network does not call, and those of outputs the loss weighs 0 (the coarsest deep-supervision
    output). Read from the autograd graph of one training-mode forward of a patch on the meta
    device (shapes only: no memory, no compute)."""
    with torch.device("meta"):
        network = build_network(config, in_channels).train()
        network.gradient_checkpointing = False  # a checkpointed block would hide its parameters from the graph
        outputs = network(torch.empty(1, in_channels, *config.sampling.patch_size))
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    weights = loss.output_weights(outputs, config.sampling.patch_size) if isinstance(loss, DeepSupervisionLoss) else [1]
    pending = [output.grad_fn for output, weight in zip(outputs, weights) if weight]
    seen, reached = set(), set()
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):  # AccumulateGrad: where a parameter's gradient lands
            reached.add(id(node.variable))
        pending.extend(child for child, _ in node.next_functions)
    return [name for name, parameter in network.named_parameters() if id(parameter) not in reached]


class Trainer:
    """Train ``config`` into ``run_dir``; ``resume=True`` continues from ``run_dir/last.pt``
    (from epoch 1 when the run was stopped before its first checkpoint), as do the workers
    torchrun restarts (``--max-restarts``) in the run folder of this config.

    ``progress_bar`` is a tqdm-like class used on the main process (None: no bar).
    """

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        progress_bar: Any = None,
        context: distributed.DistributedContext | None = None,
    ) -> None:
        check_training_config(config)  # before any data is read, and before the process group forms
        self.config, self.run_dir = config, Path(run_dir)
        self.context = context or distributed.init_distributed(config.training.device)
        self.progress_bar = progress_bar if self.context.is_main else None
        self._new_splits: tuple[list[dict[str, list[str]]], Path] | None = None
        if not resume and distributed.restarted_in_run(self.run_dir / CONFIG_FILE, self.run_dir / LAST, config):
            resume, overwrite = True, False  # a torchrun restart continues its own job's run
        if not resume and not overwrite and (self.run_dir / LAST).exists():
            raise OutputExistsError(
                f"{self.run_dir} holds a run already; "
                f"use --resume {self.run_dir} to continue it or --overwrite to start again"
            )
        seed = config.training.seed
        random.seed(seed)
        torch.manual_seed(seed)  # the same initial weights on every rank
        np.random.seed(seed % 2**32)

        train_items, self.val_items = self._split_cases()
        self.num_workers = resolve_num_workers(config.data.num_workers, distributed.ranks_on_node(self.context))
        if config.data.cache == "memory" and self.context.enabled and self.context.is_main:
            logger.warning(
                "data.cache=memory keeps a copy of the preprocessed training cases in each of the %d "
                "processes; where host memory is short, data.cache=disk keeps one copy on disk, read by "
                "all of them",
                self.context.world_size,
            )
        self.train_dataset = make_dataset(
            train_items, training_transforms(config), config.data.cache, self._cache_dir(), self.num_workers
        )
        self.train_loader: DataLoader | None = None  # built on first use, see _loader
        self.val_dataset = (
            make_dataset(self.val_items, validation_transforms(config), config.data.cache, self._cache_dir(), 1)
            if self.val_items
            else None
        )
        in_channels = len(config.data.channels) or 1
        self.network = build_network(config, in_channels)
        if config.training.init_weights and not resume:  # a resumed run has its own weights in last.pt
            initialise_from(self.network, config.training.init_weights)
        self.network = self.network.to(self.context.device)
        self.label_space = LabelSpace.from_config(config)
        self.loss = loss_from_config(
            config.loss, activation=self.label_space.activation, num_outputs=self.label_space.num_outputs
        )
        # Frozen, so DDP waits for no gradient the loss never sends; they stay in the state dict.
        untrained = untrained_parameters(config, in_channels, self.loss)
        for name in untrained:
            self.network.get_parameter(name).requires_grad_(False)
        logger.debug("not trained (the loss never reaches them): %s", ", ".join(untrained) or "none")
        self.model = distributed.data_parallel(self.network, self.context)
        if config.training.compile:  # after DDP, as PyTorch advises: its graphs then split at DDP's buckets
            self.model = torch.compile(self.model)
        self.nonfinite_streak = 0  # steps skipped in a row for an inf/NaN loss (see _skip_nonfinite)
        self.optimizer = build_optimizer(config.optimizer, self.network.parameters())
        steps = config.training.iterations_per_epoch
        self.schedule = LearningRateSchedule(
            config.schedule, config.optimizer.lr, config.training.epochs * steps, config.schedule.warmup_epochs * steps
        )
        self.autocast_dtype = resolve_precision(config.training.precision, self.context.device)
        use_scaler = self.autocast_dtype == torch.float16 and self.context.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.log = RunLog(self.run_dir, tensorboard=self.context.is_main) if self.context.is_main else None
        self.start_epoch, self.best_metric, self.best_epoch, self.stale_validations = 0, None, None, 0
        self.fingerprint: dict[str, Any] | None = None  # the training scans, stored in every checkpoint
        if self.context.is_main:
            self._remove_stale_temporaries()
            if self._new_splits is not None:
                save_folds(*self._new_splits)
        if resume and (self.run_dir / LAST).exists():
            self._resume()
        elif self.context.is_main:
            if resume:  # killed before its first checkpoint: start it again from epoch 1
                logger.info("%s holds no %s yet; starting the run from epoch 1", self.run_dir, LAST)
            dump_config(config, self.run_dir / CONFIG_FILE, header=f"resolved config of the run in {self.run_dir}")
        distributed.check_same_start(self.start_epoch, self.run_dir, self.context)
        distributed.mark_job(self.run_dir, self.context)  # so that a torchrun restart continues this run
        if self.context.is_main and self.fingerprint is None:  # a resumed run keeps last.pt's
            images = [item["image"] for item in train_items]  # 64 of them at most, spread evenly
            self.fingerprint = fingerprint_images(images, config, max_cases=64).to_dict()

    # ------------------------------------------------------------------ data
    def _cache_dir(self) -> Path:
        return Path(self.config.data.cache_dir) if self.config.data.cache_dir else self.run_dir / "cache"

    def _split_cases(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``(train items, validation items)``: the validation cases are carved from the fold's
        training cases and recorded in splits.json; the fold's held-out cases are neither."""
        data = self.config.data
        if not data.root:
            raise ConfigError("data.root is empty; set it to the dataset folder (volseg plan writes it)")
        dataset = find_cases(data.root, layout=data.layout)
        by_id = {case.case_id: case for case in dataset.cases}
        if data.fold == -1:
            train_ids = sorted(by_id)
            validation_ids = carve_validation(train_ids, data.validation_cases)
        else:
            splits = Path(data.splits_file) if data.splits_file else self.run_dir / SPLITS_FILE
            folds = load_folds(splits) if splits.exists() else make_folds(dataset.case_ids, data.num_folds, seed=12345)
            train_ids, _ = split_for_fold(folds, data.fold)
            if "validation" not in folds[data.fold]:
                folds[data.fold]["validation"] = carve_validation(train_ids, data.validation_cases)
                # Written with config.yaml, once the cases have loaded: a run that fails on its
                # data leaves no splits behind to disagree with the fixed dataset.
                self._new_splits = (folds, self.run_dir / SPLITS_FILE)
            elif splits != self.run_dir / SPLITS_FILE:  # a shared or nnU-Net file: the run keeps its own copy
                self._new_splits = (folds, self.run_dir / SPLITS_FILE)
            validation_ids = folds[data.fold]["validation"]
            missing = sorted(set(train_ids + folds[data.fold]["val"]) - set(by_id))
            if missing:
                raise ConfigError(f"{splits} names cases that {data.root} lacks: {', '.join(missing[:10])}")
        if not validation_ids:
            logger.info("no validation cases (data.validation_cases=0): best.pt is the last epoch's model")
        validation = set(validation_ids)
        training_ids = [i for i in train_ids if i not in validation]
        return items_from_cases(by_id[i] for i in training_ids), items_from_cases(by_id[i] for i in validation_ids)

    def _loader(self, epoch: int) -> DataLoader:
        """The run's loader, set to ``epoch``: built on first use, its workers kept until :meth:`fit`
        returns. The sample order and augmentation depend on (seed, epoch, rank) only."""
        config = self.config
        if self.train_loader is None:
            self.train_loader = training_loader(
                self.train_dataset,
                batch_size=config.sampling.batch_size,
                steps=config.training.iterations_per_epoch,
                num_workers=self.num_workers,
                seed=config.training.seed,
                rank=self.context.rank,
                pin_memory=self.context.device.type == "cuda",
            )
        self.train_loader.sampler.set_epoch(epoch)
        return self.train_loader

    # ---------------------------------------------------------------- resume
    def _remove_stale_temporaries(self) -> None:
        """Delete the temporary files a killed run left while writing its files (this run rewrites them)."""
        for name in (LAST, BEST, CONFIG_FILE, SPLITS_FILE, "metrics.csv", "curves.png", "runtime.json"):
            for stale in remove_stale_temporaries(self.run_dir / name):
                logger.debug("removed %s, left by an interrupted write", stale)

    def _resume(self) -> None:
        # Onto the CPU: load_state_dict copies the weights and optimiser moments to the training
        # device, while the RNG states must stay CPU ByteTensors and Adam's step counters on
        # the CPU (on a GPU each would cost a sync per parameter per step).
        checkpoint = load_checkpoint(self.run_dir / LAST, map_location="cpu")
        training = checkpoint.get("training")
        if training is None:
            raise ConfigError(f"{self.run_dir / LAST} holds no training state; it cannot be resumed")
        self.network.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(training["optimizer"])
        if self.scaler is not None and training.get("scaler"):
            self.scaler.load_state_dict(training["scaler"])
        restore_rng_state(training["rng"])  # rank 0's CPU states, the same on every rank; GPUs: see train_epoch
        self.start_epoch = training["epoch"] + 1
        self.best_metric, self.best_epoch = training.get("best_metric"), training.get("best_epoch")
        self.stale_validations = training.get("stale_validations", 0)
        self.fingerprint = checkpoint.get("fingerprint")
        if self.log is not None:
            self.log.restore(training.get("history", []))
            dump_config(self.config, self.run_dir / CONFIG_FILE, header=f"resolved config of the run in {self.run_dir}")
        logger.info("resuming %s at epoch %d of %d", self.run_dir, self.start_epoch + 1, self.config.training.epochs)

    def _save(self, epoch: int, metrics: dict[str, Any], is_best: bool) -> None:
        if not self.context.is_main:
            return
        training = {
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": capture_rng_state(),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "stale_validations": self.stale_validations,
            "history": self.log.history if self.log else [],
        }
        checkpoint = build_checkpoint(
            self.model, self.config, metrics=metrics, training=training, epoch=epoch + 1, fingerprint=self.fingerprint
        )
        # best.pt first: a kill between the two writes leaves last.pt one epoch behind, and the
        # resumed run redoes that epoch and writes best.pt again. The other order would leave a
        # last.pt that names this epoch as the best while best.pt holds an older one, for good.
        if is_best:
            save_checkpoint({k: v for k, v in checkpoint.items() if k != "training"}, self.run_dir / BEST)
        save_checkpoint(checkpoint, self.run_dir / LAST)

    # ------------------------------------------------------------------ loop
    def train_epoch(self, epoch: int, bar: Any = None) -> dict[str, float]:
        """One epoch of ``iterations_per_epoch`` steps; returns the mean loss of the steps taken,
        the steps skipped for an inf/NaN loss (``skipped_steps``), the learning rate and timing.

        ``bar`` is a tqdm-like bar over the whole run (one update per step).
        """
        self.model.train()
        steps, device = self.config.training.iterations_per_epoch, self.context.device
        total_loss, skipped, waited, started = 0.0, 0, 0.0, time.perf_counter()
        if bar is not None:
            bar.set_description(f"epoch {epoch + 1}/{self.config.training.epochs}")
        if device.type == "cuda":  # dropout & co.: this rank's own stream, the same after a resume
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed_for(self.config.training.seed, epoch, self.context.rank))
        batches = iter(self._loader(epoch))
        for step in range(steps):
            before = time.perf_counter()
            batch = next(batches)
            waited += time.perf_counter() - before
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            maps = [batch["weight"].to(device, non_blocking=True)] if "weight" in batch else []
            lr = self.schedule.apply(self.optimizer, epoch * steps + step)
            loss, skip = self._step(images, labels, *maps)
            if skip:
                skipped += 1
                self._skip_nonfinite(epoch, step, loss)
            else:
                self.nonfinite_streak = 0
                total_loss += loss
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                bar.update(1)
        elapsed = time.perf_counter() - started
        # Every rank skipped the same steps, so the mean over ranks of the per-rank means is the
        # mean over all the steps taken (NaN when the epoch took none).
        taken = steps - skipped
        return {
            "train_loss": distributed.mean_over_ranks(total_loss / taken if taken else math.nan, self.context),
            "skipped_steps": skipped,
            "lr": lr,
            "epoch_seconds": elapsed,
            "data_wait": waited / elapsed,
        }

    def _step(self, images: torch.Tensor, labels: torch.Tensor, *maps: torch.Tensor) -> tuple[float, bool]:
        """One optimiser step on images (N, C, *S) and labels (N, 1, *S) or region maps (N, K, *S);
        ``maps`` are per-voxel loss weights (weighted_ce). Returns ``(this rank's loss, skipped)``.

        A step whose loss is inf or NaN on any rank is skipped on every rank: no optimiser or
        scaler update, gradients dropped. Backward runs either way, so every rank joins DDP's
        all-reduces. The decision is read on the host: one sync per step, which also brings the
        loss value for the bar and the epoch mean. It cannot be avoided, as a non-fused
        optimiser's step cannot be skipped on the device (GradScaler.step syncs the same way).
        """
        enabled = self.autocast_dtype is not None
        with torch.autocast(self.context.device.type, dtype=self.autocast_dtype, enabled=enabled):
            outputs = self.model(images)
            loss = self.loss(outputs, labels, *maps)
        # (1,): how many ranks have a non-finite loss, reduced on the device before backward's all-reduces.
        bad_ranks = distributed.all_reduce_sum((~torch.isfinite(loss.detach())).float().reshape(1), self.context)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        value, bad = torch.cat([loss.detach().float().reshape(1), bad_ranks]).tolist()
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            return value, True
        clip = self.config.optimizer.grad_clip
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
            if clip:
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip:
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value, False

    def _skip_nonfinite(self, epoch: int, step: int, loss: float) -> None:
        """Count a step :meth:`_step` skipped; raise ``TrainingError`` at ``training.max_nonfinite_steps``
        in a row. Every rank skips the same steps, so all ranks give up together."""
        self.nonfinite_streak += 1
        limit = self.config.training.max_nonfinite_steps
        if self.nonfinite_streak >= limit:
            raise TrainingError(
                f"the training loss was inf or NaN for {self.nonfinite_streak} steps in a row "
                f"(training.max_nonfinite_steps={limit}); lower optimizer.lr, use bf16 or fp32, or check the data"
            )
        if self.context.is_main:
            logger.warning(
                "epoch %d, step %d: the training loss is not finite on some rank (%s here); step skipped "
                "(%d in a row, giving up at %d)",
                epoch + 1,
                step + 1,
                loss,
                self.nonfinite_streak,
                limit,
            )

    def fit(self, until_epoch: int | None = None) -> TrainResult:
        """Train to ``training.epochs`` (or early stopping); returns the run's summary.

        ``until_epoch`` stops after that epoch, as an interruption would, with the schedule
        of the full run: ``--resume`` later continues exactly where it stopped.
        """
        config = self.config
        last = config.training.epochs if until_epoch is None else min(until_epoch, config.training.epochs)
        steps = max(last - self.start_epoch, 0) * config.training.iterations_per_epoch
        bar = self.progress_bar(total=steps, unit="step", dynamic_ncols=True) if self.progress_bar else None
        try:
            with training_flags(config.training.deterministic):
                if self.context.is_main:
                    write_text(self.run_dir / "runtime.json", json.dumps(describe_runtime(), indent=1) + "\n")
                return self._fit_epochs(last, bar)
        finally:
            self.train_loader = None  # its worker processes exit
            if bar is not None:
                bar.close()

    def _fit_epochs(self, last: int, bar: Any) -> TrainResult:
        config, epoch = self.config, self.start_epoch - 1
        for epoch in range(self.start_epoch, last):
            row: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch, bar)}
            is_best = False
            if self.val_dataset is not None and (epoch + 1) % config.training.val_every == 0:
                scores = validate(self.network, self.val_dataset, config, self.context, self.autocast_dtype)
                row.update({f"val_{key}": value for key, value in scores.items()})
                metric = scores["dice_mean"]
                if self.best_metric is None or (not math.isnan(metric) and metric > self.best_metric):
                    self.best_metric, self.best_epoch, is_best, self.stale_validations = metric, epoch + 1, True, 0
                else:
                    self.stale_validations += 1
            if self.log is not None:
                self.log.record(row)
            logger.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
            val_metrics = {k: v for k, v in row.items() if k.startswith("val_")}
            self._save(epoch, val_metrics, is_best or self.val_dataset is None)
            distributed.barrier(self.context)
            if config.training.early_stopping and self.stale_validations >= config.training.early_stopping:
                logger.info("early stopping: %d validations without improvement", self.stale_validations)
                break
        if self.log is not None:
            self.log.close()
        history = self.log.history if self.log else []
        return TrainResult(self.run_dir, epoch + 1, self.best_metric, self.best_epoch, history)


def train(config: Config, run_dir: str | Path, *, until_epoch: int | None = None, **options: Any) -> TrainResult:
    """Train ``config`` into ``run_dir`` (see :class:`Trainer` for the options and
    :meth:`Trainer.fit` for ``until_epoch``)."""
    return Trainer(config, run_dir, **options).fit(until_epoch)
