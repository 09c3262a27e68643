"""What each row of the GPU check does (scripts/gpu_check.py runs them as a table, each under its own
time limit): the sizes they run at on a GPU and in ``--cpu-dry-run``, one function per row, and the
helpers they share. Imported by gpu_check.py, which puts the checkout and scripts/ on ``sys.path``."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gpu_check_data import synthetic_batch, write_brats_cases

from volseg.config import Config, load_config
from volseg.training.distributed import DistributedContext

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("gpu_check.py")  # row_ddp starts it under torchrun, with --ddp-worker


@dataclass(frozen=True)
class Sizes:
    """What each row runs: GPU sizes, or tiny ones for ``--cpu-dry-run``."""

    device: str
    small_shape: tuple[int, int, int]  # synthetic cases of the resume and DDP runs (x, y, z)
    small_network: str  # network.options of the resume and DDP runs (4 stages, deep supervision)
    small_patch: list[int]
    brats_network: str | None  # None: configs/brats.yaml's own
    patch: list[int]  # training patch and window of the BraTS-network rows
    steps: int  # timed training steps per precision
    case_shape: tuple[int, int, int]  # synthetic BraTS-sized cases of the data-wait rows
    cases: int
    loader_steps: int  # steps per epoch of the data-wait rows
    workers: tuple[int, int]
    volume: tuple[int, int, int, int]  # (C, D, H, W) of the sliding-window rows
    big_shape: tuple[int, int, int]  # the 100-class case (x, y, z)
    big_roi: list[int]
    pytest: tuple[str, ...]
    limits: dict[str, int]  # seconds per row kind


GPU = Sizes(
    "cuda",
    (48, 48, 40),
    "{deep_supervision: true, features: [8, 16, 32, 64]}",
    [32, 32, 32],
    None,
    [112, 160, 160],
    30,
    (240, 240, 155),
    4,
    12,
    (2, 8),
    (4, 155, 240, 240),
    (512, 512, 300),
    [128, 128, 128],
    ("-m", "gpu"),
    {"resume": 60, "ddp": 90, "steps": 60, "syncs": 45, "wait": 90, "window": 90, "peak": 120, "pytest": 120},
)
DRY = Sizes(
    "cpu",
    (24, 24, 20),
    "{deep_supervision: true, features: [4, 8, 16, 32]}",
    [16, 16, 16],
    "{deep_supervision: true, features: [4, 8, 16]}",
    [16, 16, 16],
    8,
    (40, 40, 32),
    2,
    3,
    (1, 2),
    (4, 24, 28, 24),
    (40, 36, 24),
    [16, 16, 16],
    ("-m", "gpu", "tests/test_gpu_inference.py"),
    {"resume": 60, "ddp": 90, "steps": 60, "syncs": 30, "wait": 60, "window": 60, "peak": 60, "pytest": 60},
)


class Skip(Exception):
    """A row that does not apply here (printed as SKIP with the reason)."""


@dataclass
class Check:
    sizes: Sizes
    work: Path

    @property
    def device(self) -> torch.device:
        return torch.device(self.sizes.device)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- data
def brats_config(
    check: Check, root: Path, *extra: str, network: str | None = None, patch: list[int] | None = None
) -> Config:
    """configs/brats.yaml on the synthetic cases in ``root``: every case trained (no validation), no
    workers, 2 epochs of 3 steps on the check's device, with ``extra`` overrides (``section.key=value``)."""
    patch = patch or check.sizes.patch
    overrides = [
        f"data.root={root}",
        "data.fold=-1",
        "data.validation_cases=0",
        "data.num_workers=0",
        "training.epochs=2",
        "training.iterations_per_epoch=3",
        "training.val_every=100",
        f"training.device={check.sizes.device}",
        f"sampling.patch_size={patch}",
        f"inference.roi_size={patch}",
    ]
    if network:
        overrides.append(f"network.options={network}")
    return load_config(REPO / "configs" / "brats.yaml", overrides + list(extra))


@contextlib.contextmanager
def cudnn_benchmark() -> Iterator[None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def new_trainer(config: Config, run: Path, **options):
    from volseg.training import Trainer

    return Trainer(config, run, overwrite=True, **options)


def close(trainer) -> None:
    """End the trainer's loader workers (Trainer.fit does this itself)."""
    if getattr(trainer, "train_loader", None) is not None:
        trainer.train_loader = None
    gc.collect()


# ---------------------------------------------------------------------------------------------- rows
def row_resume(check: Check) -> str:
    from volseg.training import train

    root = write_brats_cases(check.work / "small", check.sizes.small_shape, 4)
    config = brats_config(check, root, network=check.sizes.small_network, patch=check.sizes.small_patch)
    run = check.work / "resume"
    train(config, run, until_epoch=1, overwrite=True)
    result = train(config, run, resume=True)
    losses = [row.get("train_loss", math.nan) for row in result.history]
    if result.epochs_run != 2 or not losses or not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"resumed run ended at epoch {result.epochs_run} with losses {losses}")
    shown = ", ".join(f"{value:.3f}" for value in losses)
    return f"epoch 1, resumed from last.pt to epoch 2 on {check.sizes.device}; losses {shown}"


@dataclasses.dataclass(frozen=True)
class OneProcessGroup(DistributedContext):
    """A one-process torchrun job that still wraps the network in DDP (volseg itself skips DDP for one)."""

    @property
    def enabled(self) -> bool:
        return True


def ddp_worker(check: Check) -> None:
    """Run by torchrun: join the group (NCCL on CUDA, gloo on the CPU), train 2 epochs in DDP, print one line."""
    import torch.distributed as dist

    backend = "nccl" if check.cuda else "gloo"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if check.cuda else torch.device("cpu")
    if check.cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    try:
        root = write_brats_cases(check.work / "small", check.sizes.small_shape, 4)
        config = brats_config(check, root, network=check.sizes.small_network, patch=check.sizes.small_patch)
        trainer = new_trainer(config, check.work / "ddp", context=OneProcessGroup(0, 1, 0, device))
        if not isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel):
            raise RuntimeError(f"the network is not wrapped in DDP: {type(trainer.model).__name__}")
        result = trainer.fit()
        losses = [row["train_loss"] for row in result.history]
        print(
            f"{backend} DDP, deep supervision, {result.epochs_run} epochs x {config.training.iterations_per_epoch} "
            f"steps; losses " + ", ".join(f"{v:.3f}" for v in losses),
            flush=True,
        )
    finally:
        dist.destroy_process_group()


def row_ddp(check: Check) -> str:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        str(SCRIPT),
        "--ddp-worker",
        "--work",
        str(check.work),
    ] + (["--cpu-dry-run"] if not check.cuda else [])
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        errors = [line for line in done.stderr.splitlines() if "error" in line.lower()] or done.stderr.splitlines()
        raise RuntimeError(f"torchrun exited {done.returncode}: {(errors or ['no output'])[-1].strip()}")
    return lines[-1]


def row_steps(check: Check, precision: str) -> str:
    root = write_brats_cases(check.work / "small", check.sizes.small_shape, 4)
    config = brats_config(
        check, root, f"training.precision={precision}", "data.cache=none", network=check.sizes.brats_network
    )
    trainer = new_trainer(config, check.work / f"steps_{precision}")
    trainer.model.train()
    images, regions = synthetic_batch(config, check.device, torch.Generator().manual_seed(0))
    losses, seconds = [], []
    with cudnn_benchmark():
        for _ in range(check.sizes.steps):
            started = time.perf_counter()
            loss, skipped = trainer._step(images, regions)
            check.sync()
            seconds.append(time.perf_counter() - started)
            if skipped or not math.isfinite(loss):
                raise RuntimeError(f"step {len(losses) + 1}: loss {loss} (skipped: {skipped})")
            losses.append(loss)
    close(trainer)
    timed = seconds[3:] or seconds  # the first steps autotune cuDNN
    head, tail = np.mean(losses[:5]), np.mean(losses[-5:])
    if not tail < head:
        raise RuntimeError(f"the loss did not fall over {len(losses)} steps: {head:.4f} -> {tail:.4f}")
    scaler = " (scaler)" if getattr(trainer, "scaler", None) is not None else ""
    return (
        f"{1 / np.median(timed):.2f} steps/s{scaler}, batch {config.sampling.batch_size} x "
        f"{'x'.join(map(str, config.sampling.patch_size))}; loss {head:.3f} -> {tail:.3f} over {len(losses)} steps"
    )


def row_syncs(check: Check) -> str:
    if not check.cuda:
        raise Skip("CUDA only (torch.cuda.set_sync_debug_mode)")
    root = write_brats_cases(check.work / "small", check.sizes.small_shape, 4)
    config = brats_config(check, root, "training.precision=bf16", "data.cache=none", network=check.sizes.brats_network)
    trainer = new_trainer(config, check.work / "syncs")
    trainer.model.train()
    images, regions = synthetic_batch(config, check.device, torch.Generator().manual_seed(0))
    steps = 5
    with cudnn_benchmark():
        for _ in range(3):
            trainer._step(images, regions)
        check.sync()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    trainer._step(images, regions)
            finally:
                torch.cuda.set_sync_debug_mode(0)
    close(trainer)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    where = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    per_step = len(syncs) / steps
    sources = ", ".join(f"{place} x{count / steps:g}" for place, count in where.most_common(4)) or "none"
    text = f"{per_step:.1f} per bf16 step ({sources})"
    if per_step > 2:
        raise RuntimeError(text + "; expected at most 2 (the loss read once, the skip decision)")
    return text


def row_data_wait(check: Check, workers: int) -> str:
    root = write_brats_cases(check.work / "brats", check.sizes.case_shape, check.sizes.cases)
    config = brats_config(
        check,
        root,
        f"data.num_workers={workers}",
        "data.cache=memory",
        f"training.iterations_per_epoch={check.sizes.loader_steps}",
        network=check.sizes.brats_network,
    )
    trainer = new_trainer(config, check.work / f"wait_{workers}")
    with cudnn_benchmark():
        trainer.train_epoch(0)  # starts the workers and autotunes cuDNN
        epoch = trainer.train_epoch(1)
    close(trainer)
    return (
        f"{epoch['data_wait']:.1%} of {epoch['epoch_seconds']:.1f} s waiting, {workers} workers, "
        f"{check.sizes.loader_steps} steps of batch {config.sampling.batch_size}"
    )


def row_window(check: Check, autocast: str | None) -> str:
    from monai.inferers import sliding_window_inference as monai_window

    from volseg.inference import AUTOCAST_DTYPES, sliding_window_inference
    from volseg.training import build_network

    if autocast == "bf16" and check.cuda and not torch.cuda.is_bf16_supported():
        raise Skip("this GPU has no bf16")
    config = brats_config(check, check.work, network=check.sizes.brats_network)
    network = build_network(config, 4).to(check.device).eval()
    image = torch.randn(1, *check.sizes.volume, generator=torch.Generator().manual_seed(0)).to(check.device)
    roi, flips = check.sizes.patch, [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]

    def ours() -> torch.Tensor:
        return sliding_window_inference(
            network, image, roi, overlap=0.5, tta_flips=[0, 1, 2], autocast=autocast, output_device=check.device
        )

    def monai() -> torch.Tensor:
        total = None
        with (
            torch.inference_mode(),
            torch.autocast(check.device.type, dtype=AUTOCAST_DTYPES.get(autocast), enabled=autocast is not None),
        ):
            for dims in flips:
                out = monai_window(image.flip(dims) if dims else image, roi, 4, network, overlap=0.5, mode="gaussian")
                out = out.float().flip(dims) if dims else out.float()
                total = out if total is None else total + out
        return total / len(flips)

    times = {}
    with cudnn_benchmark():
        for name, run in (("volseg", ours), ("monai", monai)):
            run()  # warm-up: cuDNN autotuning, allocations
            check.sync()
            started = time.perf_counter()
            result = run()
            check.sync()
            times[name] = (time.perf_counter() - started, result)
    agree = ((times["volseg"][1] > 0) == (times["monai"][1] > 0)).float().mean().item()
    fast, slow = times["volseg"][0], times["monai"][0]
    return (
        f"volseg {fast:.2f} s, MONAI {slow:.2f} s ({slow / fast:.2f}x), 8 mirrorings, "
        f"{'x'.join(map(str, check.sizes.volume))}; masks agree on {agree:.2%}"
    )


def row_peak_memory(check: Check) -> str:
    from volseg.config import config_from_dict
    from volseg.inference.predictor import Predictor
    from volseg.io import Volume
    from volseg.nn import SegmentationNetwork

    class Pointwise(SegmentationNetwork):
        def __init__(self) -> None:
            super().__init__(3, 1, 100)
            self.conv = torch.nn.Conv3d(1, 100, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    config = config_from_dict(
        {
            "data": {"labels": {value: f"class {value}" for value in range(100)}, "channels": ["image"]},
            "preprocessing": {"orientation": "RAS", "spacing": None, "intensity": "none", "crop_foreground": False},
            "sampling": {"patch_size": check.sizes.big_roi},
            "inference": {"overlap": 0.25},
        }
    )
    predictor = Predictor(Pointwise(), config, device=check.sizes.device, tta=False, autocast=None, mask_nonzero=False)
    shape = check.sizes.big_shape
    volume = Volume(np.random.default_rng(0).standard_normal(shape, dtype=np.float32), np.eye(4))
    full = 100 * math.prod(shape) * 4
    if check.cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    labels = predictor.predict(volume)
    seconds = time.perf_counter() - started
    if labels.shape != shape:
        raise RuntimeError(f"labels of shape {labels.shape} for a {shape} volume")
    if not check.cuda:
        return f"{seconds:.1f} s on the CPU; GPU memory not measured ({full / 2**30:.2f} GiB of float32 logits)"
    peak = torch.cuda.max_memory_allocated()
    size = "x".join(map(str, shape))
    text = f"peak {peak / 2**30:.1f} GiB vs {full / 2**30:.1f} GiB of 100 x {size} float32 logits, {seconds:.1f} s"
    if peak >= full:
        raise RuntimeError(text)
    return text


def row_pytest(check: Check) -> str:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *check.sizes.pytest]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    lines = [line.strip("= ") for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else "no output"
    if done.returncode not in (0, 5):  # 5: no test selected
        failed = [line for line in lines if line.startswith("FAILED")]
        raise RuntimeError(f"{summary}; {failed[0] if failed else ''}".rstrip("; "))
    return summary
