"""Sliding-window inference: volseg vs MONAI (and nnU-Net's predictor when installed), one run.

Same network and weights, same volume, same window and overlap. Each method runs in its own
worker process (so process-wide settings, such as volseg's allocator tuning, stay with the
method that makes them); the workers take turns over ``--repeats`` rounds, and the median
time of each is reported with ratios, voxels/s, achieved GFLOP/s and the worker's peak RSS.

Default: the MONAI UNet (4 -> 3 channels, 16..256 features, 2 residual units) on a
4 x 155 x 240 x 240 volume with 96^3 windows at overlap 0.5 (48 windows). ``--network``
picks the network of one of volseg's configs instead (see NETWORKS).

    python scripts/bench_inference.py                    # the full benchmark
    python scripts/bench_inference.py --quick            # a smaller volume, for a quick look
    python scripts/bench_inference.py --network volseg-brats_cpu   # volseg's CPU BraTS network
    make bench-env && .venv-bench/bin/python scripts/bench_inference.py   # with nnU-Net v2
    python scripts/bench_inference.py --end-to-end       # then volseg predict of a BraTS case
                                                         # vs its network time (bench_predict.py)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

#: network -> (volume it segments (D, H, W), window): the issue's MONAI UNet on a BraTS volume;
#: volseg's shipped configs on the volume their preprocessing produces (BraTS 240 x 240 x 155
#: at 2 mm; a hippocampus crop), with their own windows.
NETWORKS = {
    "monai-unet": ((155, 240, 240), (96, 96, 96)),
    "volseg-brats_cpu": ((78, 120, 120), (64, 64, 64)),
    "volseg-hippocampus": ((36, 50, 35), (40, 56, 40)),
    "volseg-brats": ((155, 240, 240), (112, 160, 160)),
}
REPOSITORY = Path(__file__).resolve().parents[1]


def build_network(name: str) -> tuple[torch.nn.Module, int, int]:
    """The benchmarked network in eval mode, seeded so that every worker has the same weights;
    returns (network, input channels, output channels)."""
    torch.manual_seed(0)
    if name == "monai-unet":
        from monai.networks.nets import UNet

        network = UNet(
            spatial_dims=3,
            in_channels=4,
            out_channels=3,
            channels=(16, 32, 64, 128, 256),
            strides=(2, 2, 2, 2),
            num_res_units=2,
        )
        return network.eval(), 4, 3
    from volseg.config import load_config
    from volseg.training import build_network as build_configured
    from volseg.training import output_channels

    config = load_config(REPOSITORY / "configs" / f"{name.removeprefix('volseg-')}.yaml")
    network = build_configured(config, len(config.data.channels))
    return network.eval(), len(config.data.channels), output_channels(config)


def make_runner(
    method: str, batch: int | str, network, roi, overlap, out_channels
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function that segments one image with ``method`` ('monai', 'nnunet', 'volseg', or 'volseg'
    without one of its speed-ups: 'volseg-plain-malloc', 'volseg-plain-layers')."""
    if method == "monai":
        from monai.inferers import sliding_window_inference as monai_sliding_window

        def run(image: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return monai_sliding_window(image, roi, batch, network, overlap=overlap, mode="gaussian")

        return run
    if method.startswith("volseg"):
        if method == "volseg-plain-malloc":
            os.environ["VOLSEG_MALLOC_TUNING"] = "0"
        from volseg import runtime
        from volseg.inference import sliding_window_inference

        runtime.apply()  # what volseg's CLI applies before predicting (the other methods run without it)

        def run(image: torch.Tensor) -> torch.Tensor:
            return sliding_window_inference(
                network,
                image,
                roi,
                overlap=overlap,
                sw_batch_size=batch,
                blend="gaussian",
                fast_layers=method != "volseg-plain-layers",
            )

        return run
    if method.startswith("openvino"):
        return openvino_runner(method, batch, network, roi, overlap)
    from nnunet_runner import nnunet_sliding_window

    runner, reason = nnunet_sliding_window(network, roi, overlap, out_channels)
    if runner is None:
        raise RuntimeError(reason)
    return runner


def openvino_runner(method: str, batch: int | str, network, roi, overlap) -> Callable[[torch.Tensor], torch.Tensor]:
    """volseg's sliding window on OpenVINO: 'openvino' (float32) or 'openvino-int8' (NNCF post-training
    quantization calibrated on 3 random windows, as a first look; ``volseg quantize`` calibrates on
    real windows and checks Dice)."""
    from volseg import runtime
    from volseg.inference import sliding_window_inference
    from volseg.inference.openvino_runner import OpenVINOModel, OpenVINONetwork, convert_network

    runtime.apply()
    in_channels = next(network.parameters()).shape[1]
    model = None
    if method == "openvino-int8":
        import nncf

        converted = convert_network(network, (in_channels, *roi))
        generator = torch.Generator().manual_seed(2)
        windows = [torch.randn(1, in_channels, *roi, generator=generator).numpy() for _ in range(3)]
        model = OpenVINOModel.from_model(nncf.quantize(converted, nncf.Dataset(windows), subset_size=3), "int8")
    runner = OpenVINONetwork(network, model=model)

    def run(image: torch.Tensor) -> torch.Tensor:
        return sliding_window_inference(runner, image, roi, overlap=overlap, sw_batch_size=batch, blend="gaussian")

    return run


def worker(connection, method: str, batch: int | str, network_name: str, shape, roi, overlap, threads: int) -> None:
    """Build the network and image, warm up once, then time one run per request from the parent."""
    torch.set_num_threads(threads)
    network, _, out_channels = build_network(network_name)
    image = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))
    run = make_runner(method, batch, network, roi, overlap, out_channels)
    first = run(image)  # warm-up; its output is compared between methods
    connection.send(first[0, :, ::4, ::4, ::4].float().clone())
    while connection.recv() == "run":
        started = time.perf_counter()
        run(image)
        seconds = time.perf_counter() - started
        connection.send((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def window_count(shape, roi, overlap) -> int:
    from volseg.inference import window_starts

    count = 1
    for size, window in zip(shape[1:], roi):
        count *= len(window_starts(size, window, overlap))
    return count


def flops_per_window(network: torch.nn.Module, in_channels: int, roi) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.zeros(1, in_channels, *roi))
    return float(counter.get_total_flops())


def methods(args) -> dict[str, tuple[str, int | str]]:
    table = {"monai (defaults: sw_batch_size=1)": ("monai", 1)}
    table.update({f"monai sw_batch_size={b}": ("monai", b) for b in args.monai_batches if b != 1})
    table["volseg (defaults: sw_batch_size=auto)"] = ("volseg", "auto")
    table.update({f"volseg sw_batch_size={b}": ("volseg", b) for b in args.volseg_batches})
    try:
        import openvino  # noqa: F401

        table["volseg on OpenVINO fp32 (sw_batch_size=auto)"] = ("openvino", "auto")
        table.update({f"volseg on OpenVINO fp32 sw_batch_size={b}": ("openvino", b) for b in args.volseg_batches})
        table["volseg on OpenVINO int8 (sw_batch_size=auto)"] = ("openvino-int8", "auto")
    except ImportError:
        print("# openvino not installed (pip install 'volseg[openvino]'): no OpenVINO rows")
    table["volseg auto, glibc malloc untouched"] = ("volseg-plain-malloc", "auto")
    table["volseg auto, fast_layers=False"] = ("volseg-plain-layers", "auto")
    try:
        import nnunetv2  # noqa: F401

        table["nnU-Net v2 predictor (no mirroring)"] = ("nnunet", 1)
    except ImportError:
        print("# nnunetv2 not installed: make bench-env, then run with .venv-bench/bin/python to include it")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--network",
        choices=NETWORKS,
        default="monai-unet",
        help="volseg-NAME: the network of configs/NAME.yaml (random weights)",
    )
    parser.add_argument("--shape", type=int, nargs=3, metavar=("D", "H", "W"), help="volume (default: per network)")
    parser.add_argument("--roi", type=int, nargs=3, help="window (default: per network)")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--monai-batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--volseg-batches", type=int, nargs="*", default=[4], help="fixed batches besides auto")
    parser.add_argument("--quick", action="store_true", help="a volume of at most 2 x 2 x 2 windows, 2 repeats")
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="afterwards, run scripts/bench_predict.py: a BraTS case file to file vs the network time",
    )
    args = parser.parse_args()
    default_shape, default_roi = NETWORKS[args.network]
    args.shape, args.roi = args.shape or list(default_shape), args.roi or list(default_roi)
    if args.quick:
        args.shape, args.repeats = [min(s, 2 * r) for s, r in zip(args.shape, args.roi)], 2
    network, in_channels, _ = build_network(args.network)
    shape, roi = (in_channels, *args.shape), tuple(args.roi)
    windows = window_count(shape, roi, args.overlap)
    flops = flops_per_window(network, in_channels, roi) * windows
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    print(
        f"# network {args.network}; volume {list(shape)}, window {list(roi)}, overlap {args.overlap}: "
        f"{windows} windows, {flops / 1e9:.0f} GFLOP per volume; one worker process per method"
    )
    print(
        "# volseg and nnU-Net spread their windows evenly from edge to edge, MONAI steps at a fixed interval and "
        "clamps the last one:\n# the same number and size of windows, so the same work, but the outputs differ "
        "where the windows overlap differently"
    )
    context = mp.get_context("spawn")
    table, workers, first = methods(args), {}, {}
    for name, (method, batch) in table.items():  # one at a time: the warm-ups do not overlap
        parent, child = context.Pipe()
        process = context.Process(
            target=worker,
            args=(child, method, batch, args.network, shape, roi, args.overlap, args.threads),
            daemon=True,
        )
        process.start()
        first[name] = parent.recv()
        workers[name] = (process, parent)
    seconds: dict[str, list[float]] = {name: [] for name in table}
    peak: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, (_, connection) in workers.items():
            connection.send("run")
            elapsed, peak[name] = connection.recv()
            seconds[name].append(elapsed)
    for process, connection in workers.values():
        connection.send("stop")
        process.join()
    report(args, table, seconds, peak, first, flops, shape)
    if args.end_to_end:
        bench_predict = REPOSITORY / "scripts" / "bench_predict.py"
        subprocess.run([sys.executable, str(bench_predict), "--threads", str(args.threads)], check=True)


def report(args, table, seconds, peak, first, flops, shape) -> None:
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    monai_default = medians["monai (defaults: sw_batch_size=1)"]
    monai_best = min(v for k, v in medians.items() if table[k][0] == "monai")
    voxels = float(torch.tensor(shape[1:]).prod())
    reference = first["monai (defaults: sw_batch_size=1)"]
    print(
        f"{'method':<46} {'median s':>9} {'vs MONAI default':>17} {'vs MONAI best':>14} {'Mvox/s':>7} "
        f"{'GFLOP/s':>8} {'peak RSS MiB':>13} {'max |diff|':>10}"
    )
    for name, value in medians.items():
        difference = (first[name] - reference).abs().max().item()
        print(
            f"{name:<46} {value:9.2f} {monai_default / value:16.2f}x {monai_best / value:13.2f}x "
            f"{voxels / value / 1e6:7.2f} {flops / value / 1e9:8.1f} {peak[name]:13.0f} {difference:10.2e}"
        )
    print(f"# all times: { ({k: [round(s, 2) for s in v] for k, v in seconds.items()}) }")
    print("# max |diff|: largest difference of the logits from MONAI's at defaults, on every 4th voxel")


if __name__ == "__main__":
    main()
