"""nnU-Net v2's own sliding-window predictor on any network, for ``scripts/bench_inference.py``.

nnunetv2 is not a volseg dependency: it lives in a separate environment (``make bench-env``,
then ``.venv-bench/bin/python``). Without it, :func:`nnunet_sliding_window` returns ``None``
and the reason. Run this file to check nnU-Net's logits and windows against volseg's:

    .venv-bench/bin/python scripts/nnunet_runner.py
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from importlib import metadata
from types import SimpleNamespace

import torch

NOT_INSTALLED = "nnunetv2 not installed: make bench-env, then run with .venv-bench/bin/python"


def nnunet_sliding_window(
    network: torch.nn.Module, roi: tuple[int, int, int], overlap: float, num_classes: int
) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str]:
    """A runner for ``nnUNetPredictor.predict_sliding_window_return_logits`` and its description.

    The predictor is set up as nnU-Net sets it up on a CPU (``perform_everything_on_device``
    False), with tile_step_size ``1 - overlap``, Gaussian blending and no mirroring. Its plans
    and labels are stand-ins holding only what the sliding window reads (the patch size and the
    number of output channels), so no trained-model folder is needed.

    Args:
        network: maps (1, C, *roi) to (1, num_classes, *roi); it is put in eval mode on the CPU.
        roi: the window (nnU-Net's patch size).
        overlap: fraction of a window shared with its neighbour, 0 <= overlap < 1.
        num_classes: output channels of ``network``.

    Returns:
        ``(runner, description)``, where ``runner(image)`` maps a (1, C, D, H, W) float32 CPU
        tensor to nnU-Net's (1, num_classes, D, H, W) logits (float16: nnU-Net accumulates
        in half precision); ``(None, reason)`` when nnunetv2 cannot be imported.
    """
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError:
        return None, NOT_INSTALLED
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap={overlap} is not valid; allowed: 0 <= overlap < 1")
    with contextlib.redirect_stdout(io.StringIO()):  # its "only supported for cuda devices" notice
        predictor = nnUNetPredictor(
            tile_step_size=1.0 - overlap,
            use_gaussian=True,
            use_mirroring=False,
            perform_everything_on_device=False,
            device=torch.device("cpu"),
            verbose=False,
            allow_tqdm=False,
        )
    predictor.network = network
    predictor.configuration_manager = SimpleNamespace(patch_size=[int(r) for r in roi])
    predictor.label_manager = SimpleNamespace(num_segmentation_heads=int(num_classes))
    predictor.allowed_mirroring_axes = None

    def run(image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 5 or image.shape[0] != 1:
            raise ValueError(f"expected a (1, C, D, H, W) image, got {tuple(image.shape)}")
        return predictor.predict_sliding_window_return_logits(image[0])[None]

    description = (
        f"nnU-Net v2 {metadata.version('nnunetv2')} nnUNetPredictor (tile_step_size {1.0 - overlap:g}, "
        "Gaussian, no mirroring, CPU, 1 window per call, float16 accumulation)"
    )
    return run, description


def _check() -> None:
    """nnU-Net vs volseg on a small case: window positions, logits, one timing each."""
    import itertools

    from monai.networks.nets import UNet
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    from volseg.inference import sliding_window_inference, window_starts

    torch.manual_seed(0)
    network = UNet(
        spatial_dims=3,
        in_channels=4,
        out_channels=3,
        channels=(8, 16, 32, 64, 128),
        strides=(2, 2, 2, 2),
        num_res_units=2,
    ).eval()
    image, roi, overlap, threads = torch.randn(1, 4, 70, 100, 100), (64, 64, 64), 0.5, torch.get_num_threads()
    runner, description = nnunet_sliding_window(network, roi, overlap, num_classes=3)
    if runner is None:
        print(description)
        return
    print(f"# {description}; torch {torch.__version__}, {threads} threads")
    steps = compute_steps_for_sliding_window(tuple(image.shape[2:]), roi, 1.0 - overlap)
    ours = [window_starts(s, r, overlap) for s, r in zip(image.shape[2:], roi)]
    print(f"window starts: nnU-Net {steps}, volseg {ours}: {'same' if steps == ours else 'DIFFERENT'}")
    mismatches = [
        (n, w, o)
        for n in range(32, 400)
        for w in (32, 64, 96, 128)
        for o in (0.25, 0.5, 0.75)
        if n >= w and compute_steps_for_sliding_window((n,), (w,), 1.0 - o)[0] != window_starts(n, w, o)
    ]
    print(f"window starts, sizes 32..399, windows 32/64/96/128, overlaps 0.25/0.5/0.75: {len(mismatches)} differ")

    def volseg(x: torch.Tensor) -> torch.Tensor:
        return sliding_window_inference(network, x, roi, overlap=overlap, blend="gaussian")

    def exact(x: torch.Tensor, pad: int) -> torch.Tensor:
        """nnU-Net's windows and Gaussian blended in float64, depth padded by ``pad`` each side as nnU-Net pads."""
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, pad, pad))
        weights = compute_gaussian(roi, 1.0 / 8, 10, dtype=torch.float64, device=torch.device("cpu"))
        total = torch.zeros(1, 3, *x.shape[2:], dtype=torch.float64)
        cover = torch.zeros(x.shape[2:], dtype=torch.float64)
        starts = compute_steps_for_sliding_window(tuple(x.shape[2:]), roi, 1.0 - overlap)
        for window in (tuple(slice(p, p + r) for p, r in zip(ps, roi)) for ps in itertools.product(*starts)):
            with torch.inference_mode():
                total[(..., *window)] += network(x[(..., *window)]).double() * weights
            cover[window] += weights
        return (total / cover).float()[:, :, pad : x.shape[2] - pad]

    for name, x, pad in (
        ("70x100x100", image, 0),
        ("50x70x70 (nnU-Net pads it to 64x70x70)", torch.randn(1, 4, 50, 70, 70), 7),
    ):
        theirs, mine, reference = runner(x).float(), volseg(x), exact(x, pad)
        agree = (theirs.argmax(1) == mine.argmax(1)).float().mean()
        print(
            f"{name}: max |logit| {mine.abs().max():.2f}; max |nnU-Net - volseg| {(theirs - mine).abs().max():.2e} "
            f"(mean {(theirs - mine).abs().mean():.2e}, argmax agreement {agree:.4f}); "
            f"max |nnU-Net - its float64 blend| {(theirs - reference).abs().max():.2e}, "
            f"max |volseg - nnU-Net's float64 blend| {(mine - reference).abs().max():.2e}"
        )
    for name, run in (("nnU-Net", runner), ("volseg (sw_batch_size=4)", volseg)):
        started = time.perf_counter()
        run(image)
        print(f"time {name}: {time.perf_counter() - started:.2f} s")
    print(f"threads before {threads}, after {torch.get_num_threads()}")


if __name__ == "__main__":
    _check()
