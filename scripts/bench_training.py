"""Training-step benchmark: the pure step (the floor) vs volseg's Trainer vs a plain MONAI loop, one run.

Every method trains its own copy of the same initial network (volseg's, from the config) with the
same loss object, batch size, patch size, optimizer settings and precision (the Trainer's: autocast
dtype, with a gradient scaler for fp16 on CUDA; fp32 on the CPU by default):

  pure              zero_grad + forward + loss + backward + optimizer step on one fixed random batch
  volseg _step      Trainer._step on that same fixed batch (the Trainer's step without its data)
  volseg trainer    the real Trainer (its cache, augmentation and loader over the real data): batches
                    of Trainer._loader(epoch) into Trainer._step, driven as Trainer.train_epoch does
  MONAI loop        textbook MONAI: LoadImaged ... RandAffined, CacheDataset + DataLoader with the
                    Trainer's worker count, then zero_grad / forward / loss / backward / step (MetaTensors
                    reach the network, as in MONAI's tutorials; flips + affine only, none of volseg's
                    intensity / blur / noise / low-resolution augmentations)

The methods run interleaved in blocks: --rounds rounds, each running every method once (order
rotated per round), so that a busy machine's load swings fall on all of them. The Trainer's loader
keeps its workers from block to block as it does from epoch to epoch (each block takes exactly
the batches it asks for, so no worker prefetches in another method's time); the MONAI loop starts
a fresh loader per block, as its tutorials do per epoch, and shuts it down after. The first block
of each method drops --warmup steps, later ones their first step (a fresh loader's start, which a
real epoch amortises over its 100+ steps). For the cost of making one augmented patch, see
scripts/bench_augmentation.py.
Reported over the --steps kept steps per method: median and fastest s/step, steps/s, the median's
ratio to pure, and the data-wait fraction (time blocked in next(loader) / step time).
The Trainer's run folder is a temporary directory; validation is never run. 3D class-label configs.
On a shared CPU keep --threads + the other jobs' threads <= cores: oversubscribed OpenMP threads
make step times swing several-fold, far more than the differences measured here.

Usage (from the repository root):
    .venv/bin/python scripts/bench_training.py                        # configs/hippocampus.yaml, 20 steps
    .venv/bin/python scripts/bench_training.py --steps 4 --warmup 1   # a quick look
    .venv/bin/python scripts/bench_training.py --config configs/tiny_cpu.yaml --threads 2
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import monai
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    Spacingd,
    SpatialPadd,
)
from torch.utils.data import RandomSampler

from volseg import runtime
from volseg.config import Config, load_config
from volseg.runtime import training_flags
from volseg.training import Trainer, output_channels
from volseg.training.optim import build_optimizer

Samples = list[tuple[float, float]]  # (step seconds, data-wait seconds) per step
Block = Callable[[int, int], Samples]  # (round, steps) -> samples


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a step's time is its own (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fixed_batch_block(step: Callable[[], object], device: torch.device) -> Block:
    """A block that times ``step()`` (no data loading) ``steps`` times."""

    def block(_round: int, steps: int) -> Samples:
        samples = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            sync(device)
            samples.append((time.perf_counter() - start, 0.0))
        return samples

    return block


def plain_step(
    network: torch.nn.Module, loss: torch.nn.Module, optimizer: torch.optim.Optimizer, trainer: Trainer
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """zero_grad + forward + loss + backward + step in the Trainer's precision (its autocast dtype,
    and a gradient scaler of its own where the Trainer has one), without its checks and clipping."""
    device, dtype = trainer.context.device, trainer.autocast_dtype
    scaler = torch.amp.GradScaler(device.type) if trainer.scaler is not None else None

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            value = loss(network(images), labels)
        if scaler is None:
            value.backward()
            optimizer.step()
        else:
            scaler.scale(value).backward()
            scaler.step(optimizer)
            scaler.update()

    return step


def trainer_block(trainer: Trainer) -> Block:
    """One epoch-like block of the real Trainer: its loader for epoch ``round`` into its ``_step``,
    the per-step work of ``Trainer.train_epoch`` with a clock around ``next()`` and around the step."""
    device = trainer.context.device

    def block(epoch: int, steps: int) -> Samples:
        loader = trainer._loader(epoch)
        loader.sampler.num_samples = steps * trainer.config.sampling.batch_size  # exactly this block's batches
        trainer.model.train()
        batches, samples = iter(loader), []
        for step in range(steps):
            start = time.perf_counter()
            batch = next(batches)
            waited = time.perf_counter() - start
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            maps = [batch["weight"].to(device, non_blocking=True)] if "weight" in batch else []
            trainer.schedule.apply(trainer.optimizer, epoch * steps + step)
            trainer._step(images, labels, *maps)
            sync(device)
            samples.append((time.perf_counter() - start, waited))
        return samples

    return block


def _nonzero(image: torch.Tensor) -> torch.Tensor:
    return image != 0  # the z-scored image is negative in places: MONAI's default (> 0) would over-crop


def monai_dataset(config: Config, items: list[dict[str, str]], workers: int) -> CacheDataset:
    """The textbook MONAI pipeline with the config's spacing, patch, sampling ratio, flips and affine."""
    keys, patch = ["image", "label"], [int(p) for p in config.sampling.patch_size]
    aug, ratio = config.augmentation, config.sampling.foreground_ratio
    angle, (low, high) = math.radians(aug.affine.rotation_degrees), aug.affine.scale
    transforms = Compose(
        [
            LoadImaged(keys),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes=config.preprocessing.orientation, labels=None),
            Spacingd(keys, pixdim=config.preprocessing.spacing or [1.0, 1.0, 1.0], mode=("bilinear", "nearest")),
            NormalizeIntensityd("image", nonzero=True, channel_wise=True),
            CropForegroundd(keys, source_key="image", select_fn=_nonzero, allow_smaller=True),
            SpatialPadd(keys, spatial_size=patch),
            RandCropByPosNegLabeld(keys, "label", spatial_size=patch, pos=ratio, neg=1.0 - ratio, num_samples=1),
            *[RandFlipd(keys, prob=aug.flip.prob, spatial_axis=axis) for axis in aug.flip.axes],
            RandAffined(
                keys,
                prob=aug.affine.prob,
                spatial_size=patch,
                rotate_range=[(-angle, angle)] * 3,
                scale_range=[(low - 1.0, high - 1.0)] * 3,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
        ]
    ).set_random_state(seed=config.training.seed)
    return CacheDataset(items, transforms, cache_rate=1.0, num_workers=max(1, workers), progress=False)


def monai_block(
    config: Config, dataset: CacheDataset, network: torch.nn.Module, loss: torch.nn.Module, trainer: Trainer
) -> Block:
    """A textbook MONAI training loop over a fresh DataLoader per block (seeded by the round), with
    the Trainer's worker count and precision."""
    step = plain_step(network, loss, build_optimizer(config.optimizer, network.parameters()), trainer)
    device, batch_size, workers, seed = (
        trainer.context.device,
        config.sampling.batch_size,
        trainer.num_workers,
        config.training.seed,
    )

    def block(round_: int, steps: int) -> Samples:
        sampler = RandomSampler(
            dataset,
            replacement=True,
            num_samples=steps * batch_size,
            generator=torch.Generator().manual_seed(seed + round_),
        )
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            generator=torch.Generator().manual_seed(seed + round_),
            pin_memory=device.type == "cuda",
        )
        network.train()
        batches, samples = iter(loader), []
        for _ in range(steps):
            start = time.perf_counter()
            batch = next(batches)
            waited = time.perf_counter() - start
            step(batch["image"].to(device), batch["label"].to(device))
            sync(device)
            samples.append((time.perf_counter() - start, waited))
        del batches
        return samples

    return block


def check_config(config: Config, path: str) -> None:
    """Exit with one line where the data is missing or the config is outside this benchmark's scope."""
    root = Path(config.data.root or ".")
    if not config.data.root or not root.is_dir():
        sys.exit(f"bench_training: dataset not found: {root.resolve()} (data.root of {path})")
    if config.network.spatial_dims != 3 or config.data.regions or config.loss.name == "weighted_ce":
        sys.exit(f"bench_training: {path}: only 3D class-label configs (no regions, no weighted_ce) are benchmarked")
    if sorted(int(v) for v in config.data.labels) != list(range(len(config.data.labels))):
        sys.exit(f"bench_training: {path}: the MONAI loop needs label values 0..C-1 in the files")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/hippocampus.yaml", help="volseg config (data.root must exist)")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per method (after warm-up)")
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped before each method's first block")
    parser.add_argument("--rounds", type=int, default=4, help="blocks per method, interleaved (at most --steps)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    runtime.apply(runtime.Runtime(threads=args.threads))  # as the CLI: allocator tuning, threads
    config = load_config(args.config)
    check_config(config, args.config)
    args.rounds = max(1, min(args.rounds, args.steps))
    per_block = max(1, math.ceil(args.steps / args.rounds))
    seed, batch, patch = config.training.seed, config.sampling.batch_size, config.sampling.patch_size

    with (
        tempfile.TemporaryDirectory(prefix="bench_training_") as run_dir,
        training_flags(config.training.deterministic),
    ):
        started = time.perf_counter()
        trainer = Trainer(config, run_dir)  # seeds, splits, caches, network, loss, optimizer
        trainer_setup = time.perf_counter() - started
        device, loss = trainer.context.device, trainer.loss
        initial = copy.deepcopy(trainer.network)  # the same starting weights for every method
        items = [{"image": item["image"][0], "label": item["label"]} for item in trainer.train_dataset.data]
        started = time.perf_counter()
        dataset = monai_dataset(config, items, trainer.num_workers)
        monai_setup = time.perf_counter() - started

        torch.manual_seed(seed)
        channels, classes = len(config.data.channels) or 1, output_channels(config)
        images = torch.randn(batch, channels, *patch, device=device)
        labels = torch.randint(0, classes, (batch, 1, *patch), device=device)
        pure_net = copy.deepcopy(initial).train()
        pure_step = plain_step(pure_net, loss, build_optimizer(config.optimizer, pure_net.parameters()), trainer)

        methods: dict[str, Block] = {
            "pure (fixed batch)": fixed_batch_block(lambda: pure_step(images, labels), device),
            "volseg _step (fixed batch)": fixed_batch_block(lambda: trainer._step(images, labels), device),
            "volseg trainer": trainer_block(trainer),
            "plain MONAI loop": monai_block(config, dataset, copy.deepcopy(initial), loss, trainer),
        }
        names = list(methods)
        results: dict[str, Samples] = {name: [] for name in names}
        for round_ in range(args.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                started = time.perf_counter()
                drop = args.warmup if round_ == 0 else min(args.warmup, 1)
                results[name] += methods[name](round_, drop + per_block)[drop:]
                print(
                    f"  round {round_ + 1}/{args.rounds}: {name}: {time.perf_counter() - started:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
        if trainer.log is not None:
            trainer.log.close()
        trainer.train_loader = None  # its workers exit

    parameters = sum(p.numel() for p in initial.parameters())
    print(
        f"# {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, {args.threads} torch threads, "
        f"torch {torch.__version__}, monai {monai.__version__}, device {device}"
    )
    print(
        f"# config {args.config}: {config.network.name} {config.network.options} ({parameters / 1e6:.2f} M "
        f"parameters), {classes} classes"
    )
    print(
        f"# batch {batch} x patch {patch}, loss {config.loss.name} "
        f"(deep supervision {config.loss.deep_supervision}), "
        f"{config.optimizer.name} lr {config.optimizer.lr} grad_clip {config.optimizer.grad_clip}, "
        f"precision {trainer.autocast_dtype or 'fp32'}"
    )
    print(
        f"# data: {len(items)} training cases, cache {config.data.cache}, {trainer.num_workers} loader "
        f"workers; setup: Trainer {trainer_setup:.1f} s (splits, caches, network), MONAI cache {monai_setup:.1f} s"
    )
    print(
        f"# {args.rounds} rounds x {per_block} measured steps per method (warm-up: {args.warmup} steps, "
        f"then {min(args.warmup, 1)} per block)"
    )
    print()
    floor = statistics.median(t for t, _ in results[names[0]])
    medians = {name: statistics.median(t for t, _ in samples) for name, samples in results.items()}
    print(f"{'method':<28} {'s/step':>8} {'fastest':>8} {'steps/s':>8} {'x pure':>7} {'data wait':>10}")
    for name, samples in results.items():
        wait = sum(w for _, w in samples) / sum(t for t, _ in samples)
        loads = "trainer" in name or "MONAI" in name
        print(
            f"{name:<28} {medians[name]:8.3f} {min(t for t, _ in samples):8.3f} {1 / medians[name]:8.2f} "
            f"{medians[name] / floor:7.3f} {f'{wait:.1%}' if loads else '-':>10}"
        )
    print()
    ratio = medians["volseg trainer"] / floor
    print(f"volseg trainer vs pure: {ratio:.3f}x (target <= 1.05x: {'met' if ratio <= 1.05 else 'NOT met'})")
    print(f"volseg trainer vs plain MONAI loop: {medians['volseg trainer'] / medians['plain MONAI loop']:.3f}x")


if __name__ == "__main__":
    main()
