"""The layers volseg.inference.fast_layers replaces, PyTorch's kernel vs volseg's stand-in, one run.

For transposed convolutions (kernel 3, stride 2, the U-Net up-sampling layer) of several
input/output channel counts, 2D and 3D, and for instance norm of several shapes: the median
time of each over ``--repeats`` calls (after two warm-ups), their ratio and the largest
difference of the outputs. The ratios set ``SUBPIXEL_MAX_OUT_CHANNELS`` (docs/performance.md).

    python scripts/bench_layers.py
    python scripts/bench_layers.py --repeats 15 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from volseg import runtime
from volseg.inference.fast_layers import SUBPIXEL_MAX_OUT_CHANNELS, SubpixelConvTranspose, TwoPassInstanceNorm

#: (spatial dims, batch, in channels, out channels, input size): the MONAI UNet's top layer
#: (32 -> 3 at 48^3, 4 windows) and neighbours, then 2D slices.
TRANSPOSED = [
    (3, 4, 32, 1, 48),
    (3, 4, 32, 2, 48),
    (3, 4, 32, 3, 48),
    (3, 4, 32, 4, 48),
    (3, 4, 32, 8, 48),
    (3, 4, 32, 16, 48),
    (3, 4, 16, 4, 48),
    (3, 4, 64, 4, 24),
    (3, 4, 64, 8, 24),
    (3, 4, 128, 32, 12),
    (2, 16, 32, 3, 128),
    (2, 8, 32, 2, 256),
    (2, 16, 32, 8, 128),
    (2, 16, 64, 4, 64),
]
#: (batch, channels, *spatial) inputs of instance norm: the MONAI UNet's levels, then 2D slices.
NORMS = [
    (4, 16, 48, 48, 48),
    (4, 3, 96, 96, 96),
    (4, 32, 24, 24, 24),
    (4, 64, 12, 12, 12),
    (16, 16, 256, 256),
    (16, 64, 64, 64),
    (16, 3, 256, 256),
]


def median_ms(function: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Median wall time of ``function()`` in ms after two warm-ups, and its last output."""
    with torch.inference_mode():
        function()
        output = function()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            output = function()
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, output


def compare(name: str, original: nn.Module, stand_in: nn.Module, x: torch.Tensor, repeats: int) -> None:
    pytorch, expected = median_ms(lambda: original(x), repeats)
    volseg, result = median_ms(lambda: stand_in(x), repeats)
    difference = (result - expected).abs().max().item()
    print(f"{name:<44} {pytorch:9.1f} {volseg:9.1f} {pytorch / volseg:7.2f}x {difference:10.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    runtime.apply(runtime.Runtime(threads=args.threads))  # as the CLI: allocator tuning, threads
    torch.manual_seed(0)
    print(
        f"# {args.threads} threads, torch {torch.__version__}; medians of {args.repeats} calls, ms; "
        f"volseg uses the sub-pixel form up to {SUBPIXEL_MAX_OUT_CHANNELS} output channels"
    )
    print(f"{'layer, input':<44} {'PyTorch':>9} {'stand-in':>9} {'speed-up':>8} {'max |diff|':>10}")
    for dims, batch, in_channels, out_channels, size in TRANSPOSED:
        layer_class = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        layer = layer_class(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1).eval()
        x = torch.randn(batch, in_channels, *[size] * dims)
        compare(
            f"transposed {in_channels}->{out_channels}, {list(x.shape)}",
            layer,
            SubpixelConvTranspose(layer),
            x,
            args.repeats,
        )
    for shape in NORMS:
        norm = (nn.InstanceNorm3d if len(shape) == 5 else nn.InstanceNorm2d)(shape[1], affine=True).eval()
        x = torch.randn(shape) * 3 + 1
        compare(f"instance norm, {list(shape)}", norm, TwoPassInstanceNorm(norm), x, args.repeats)


if __name__ == "__main__":
    main()
