"""PyTorch against OpenVINO fp32 for every registered network family: what ``--backend auto`` should pick.

Each family at a realistic width (its default features unless given below), in 3D and 2D, runs
volseg's sliding window over one volume with each backend (same windows, blending and batch);
one untimed call per backend first (OpenVINO converts and compiles once), then ``--repeats``
calls, alternating; medians. Run it on an idle machine:

    python scripts/bench_backends.py --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from volseg.inference.backends import AUTO_CPU_BACKEND, runner_for
from volseg.inference.sliding_window import sliding_window_inference
from volseg.nn import create_model, list_models

#: Options per family (features as a shipped config or the paper would use, trimmed for 2 CPU cores).
OPTIONS = {
    "unet": dict(features=[16, 32, 64, 128, 256]),
    "attention-unet": dict(features=[16, 32, 64, 128, 256]),
    "unet++": dict(features=[16, 32, 64, 128]),
    "unet-paper": dict(features=[8, 16, 32]),  # valid convolutions: a window loses ~40 voxels per axis
    "segnet": dict(features=[16, 32, 64, 128], num_convs=[2, 2, 3, 3]),
    "ternausnet": dict(features=[16, 32, 64, 128, 128]),
}
VOLUME = {3: (1, 1, 80, 80, 80), 2: (1, 1, 320, 320)}
WINDOW = {3: (48, 48, 48), 2: (128, 128)}
#: unet-paper's valid convolutions need larger windows (its output tile is the window less its margin)
WINDOW_OF = {"unet-paper": {3: (96, 96, 96), 2: (188, 188)}}


def time_calls(runner, image, roi, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sliding_window_inference(runner, image, roi, overlap=0.5, sw_batch_size=4, device="cpu")
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", nargs="*", default=list_models())
    parser.add_argument("--dims", type=int, nargs="*", default=[3, 2])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, repeats {args.repeats}, overlap 0.5, batch 4, float32")
    print(f"{'family':<16} {'dims':>4} {'torch s':>8} {'openvino s':>11} {'speed-up':>9}  auto now")
    for name in args.families:
        for dims in args.dims:
            torch.manual_seed(0)
            try:
                network = create_model(name, dims, 1, 3, **OPTIONS[name]).eval()
            except Exception as error:  # e.g. a family that is 2D only
                print(f"{name:<16} {dims:>4}  not built: {error}")
                continue
            image = torch.randn(VOLUME[dims])
            roi = network.nearest_valid_shape(WINDOW_OF.get(name, WINDOW)[dims], "up")
            runners = {"torch": runner_for(network, "torch"), "openvino": runner_for(network, "openvino")}
            for runner in runners.values():  # conversion, compilation, first allocations
                time_calls(runner, image, roi, 1)
            times = {backend: [] for backend in runners}
            for _ in range(args.repeats):
                for backend, runner in runners.items():
                    times[backend] += time_calls(runner, image, roi, 1)
            t, o = (statistics.median(times[b]) for b in ("torch", "openvino"))
            print(f"{name:<16} {dims:>4} {t:8.2f} {o:11.2f} {t / o:8.2f}x  {AUTO_CPU_BACKEND.get(name)}", flush=True)


if __name__ == "__main__":
    main()
