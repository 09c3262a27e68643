"""Sliding-window inference: volseg vs MONAI (and nnU-Net's predictor when installed), one run.

Same network and weights, same volume, same window and overlap; the methods are interleaved
over ``--repeats`` rounds and the median time of each is reported with ratios, voxels/s,
achieved GFLOP/s and peak memory. Default: the issue's MONAI UNet (4 -> 3 channels,
16..256 features, 2 residual units) on a 4 x 155 x 240 x 240 volume with 96^3 windows at
overlap 0.5 (48 windows).

    python scripts/bench_inference.py                 # the full benchmark
    python scripts/bench_inference.py --quick         # a smaller volume, for a quick look
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from collections.abc import Callable

import torch
from monai.inferers import sliding_window_inference as monai_sliding_window
from monai.networks.nets import UNet as MonaiUNet
from torch.utils.flop_counter import FlopCounterMode

from volseg.inference import sliding_window_inference, window_starts


def build_network() -> torch.nn.Module:
    torch.manual_seed(0)
    network = MonaiUNet(spatial_dims=3, in_channels=4, out_channels=3, channels=(16, 32, 64, 128, 256),
                        strides=(2, 2, 2, 2), num_res_units=2)
    return network.eval()


def flops_per_window(network: torch.nn.Module, roi: tuple[int, ...]) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.zeros(1, 4, *roi))
    return float(counter.get_total_flops())


def methods(network, roi, overlap, monai_batches) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    def monai(batch: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(image: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return monai_sliding_window(image, roi, batch, network, overlap=overlap, mode="gaussian")
        return run

    def volseg(batch: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(image: torch.Tensor) -> torch.Tensor:
            return sliding_window_inference(network, image, roi, overlap=overlap, sw_batch_size=batch, blend="gaussian")
        return run

    table = {"monai (defaults: sw_batch_size=1)": monai(1)}
    table.update({f"monai sw_batch_size={b}": monai(b) for b in monai_batches if b != 1})
    table.update({"volseg sw_batch_size=4": volseg(4), "volseg sw_batch_size=2": volseg(2)})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=[4, 155, 240, 240], metavar=("C", "D", "H", "W"))
    parser.add_argument("--roi", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="4 x 96 x 144 x 144 volume, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.shape, args.repeats = [4, 96, 144, 144], 2
    torch.set_num_threads(args.threads)
    network, roi = build_network(), tuple(args.roi)
    image = torch.randn(1, *args.shape)
    windows = 1
    for size, window in zip(args.shape[1:], roi):
        windows *= len(window_starts(size, window, args.overlap))
    flops = flops_per_window(network, roi) * windows
    table = methods(network, roi, args.overlap, monai_batches=(1, 2, 4))
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    print(f"# volume {args.shape}, window {list(roi)}, overlap {args.overlap}: {windows} windows, "
          f"{flops / 1e9:.0f} GFLOP per volume")
    print("# volseg spreads its windows evenly from edge to edge (as nnU-Net does), MONAI steps at a fixed "
          "interval and clamps the last one:\n# the same number and size of windows, so the same work, but the "
          "outputs differ where the windows overlap differently")
    for run in table.values():  # one warm-up each
        run(image)
    seconds: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(args.repeats):
        for name, run in table.items():
            started = time.perf_counter()
            run(image)
            seconds[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    monai_default = medians["monai (defaults: sw_batch_size=1)"]
    monai_best = min(v for k, v in medians.items() if k.startswith("monai"))
    voxels = float(torch.tensor(args.shape[1:]).prod())
    print(f"{'method':<36} {'median s':>9} {'vs MONAI default':>17} {'vs MONAI best':>14} {'Mvox/s':>8} {'GFLOP/s':>8}")
    for name, value in medians.items():
        print(f"{name:<36} {value:9.2f} {monai_default / value:16.2f}x {monai_best / value:13.2f}x "
              f"{voxels / value / 1e6:8.2f} {flops / value / 1e9:8.1f}")
    print(f"# all times: {({k: [round(s, 2) for s in v] for k, v in seconds.items()})}")
    print(f"# peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
