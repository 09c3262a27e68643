"""Augmentation cost: milliseconds to make one training patch, per transform, for a config.

What one loader worker pays per patch: the config's training pipeline from its first random
transform on (the patch sampler, every augmentation with prob > 0, the dtype conversion), applied
to a copy of a case preprocessed once (as data.cache holds it), in this one process with
--threads torch threads (a DataLoader worker has 1). Reported: per transform, the median and mean
ms per patch and its share of the mean total; the patch's median and 90th percentile; patches/s
per worker; and how many workers keep up with --steps-per-second steps of sampling.batch_size
patches. The cases are preprocessed first (timed separately: once per case in training).

Usage (from the repository root):
    .venv/bin/python scripts/bench_augmentation.py --config configs/brats.yaml
    .venv/bin/python scripts/bench_augmentation.py --config configs/hippocampus.yaml --patches 100 --repeats 3
    .venv/bin/python scripts/bench_augmentation.py --config CONFIG --set augmentation.elastic.prob=0
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from collections import defaultdict

from monai.transforms import RandomizableTrait, Transform

from volseg import runtime
from volseg.config import load_config
from volseg.data.datasets import find_cases
from volseg.data.transforms import items_from_cases, training_transforms


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="volseg config (data.root must exist)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--cases", type=int, default=4, help="cases to preprocess and draw patches from")
    parser.add_argument("--patches", type=int, default=40, help="patches per repeat (cycling over the cases)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the patches, all of them measured")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (a loader worker has 1)")
    parser.add_argument("--steps-per-second", type=float, default=2.0, help="training speed the workers must feed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random transforms")
    args = parser.parse_args(argv)
    if min(args.cases, args.patches, args.repeats, args.threads) < 1:
        sys.exit("bench_augmentation: --cases, --patches, --repeats and --threads must be >= 1")
    runtime.apply(runtime.Runtime(threads=args.threads))  # as the CLI: allocator tuning, threads
    config = load_config(args.config, args.set)
    cases = [case for case in find_cases(config.data.root, layout=config.data.layout).cases if case.label is not None]
    if not cases:
        sys.exit(f"bench_augmentation: no labelled cases in {config.data.root} (data.root of {args.config})")
    pipeline = training_transforms(config)
    # Where the memory / disk cache stops, as MONAI's CacheDataset decides it.
    first = pipeline.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))
    steps = pipeline.transforms[first:] if first is not None else []
    names = [type(t).__name__ for t in steps]
    names = [f"{n}#{names[:i].count(n) + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]

    started = time.perf_counter()
    cached = [pipeline(item, end=first) for item in items_from_cases(cases[: args.cases])]
    preprocessing = (time.perf_counter() - started) / len(cached)

    pipeline.set_random_state(seed=args.seed)
    per_step: dict[str, list[float]] = defaultdict(list)
    totals: list[float] = []
    for _ in range(args.repeats):
        for index in range(args.patches):
            begin = time.perf_counter()
            data = copy.deepcopy(cached[index % len(cached)])  # the cache hands each patch its own copy
            per_step["(copy of the cached case)"].append(time.perf_counter() - begin)
            for offset, name in enumerate(names):
                mark = time.perf_counter()
                data = pipeline(data, start=first + offset, end=first + offset + 1)
                per_step[name].append(time.perf_counter() - mark)
            totals.append(time.perf_counter() - begin)

    batch, mean_total = config.sampling.batch_size, statistics.fmean(totals)
    patch = "x".join(str(p) for p in config.sampling.patch_size)
    print(
        f"# {args.config}: patch {patch}, {len(config.data.channels) or 1} channels, batch {batch}; "
        f"{len(cached)} cases, {args.repeats} x {args.patches} patches, {args.threads} torch threads"
    )
    print(f"# preprocessing (once per case, then cached): {preprocessing:.2f} s per case")
    print(f"{'transform':<34} {'median ms':>10} {'mean ms':>9} {'share':>7}")
    for name, times in per_step.items():
        print(
            f"{name:<34} {statistics.median(times) * 1e3:10.2f} {statistics.fmean(times) * 1e3:9.2f} "
            f"{statistics.fmean(times) / mean_total:7.1%}"
        )
    median = statistics.median(totals)
    print(
        f"{'ms per augmented patch':<34} {median * 1e3:10.2f} {mean_total * 1e3:9.2f}  (p90 "
        f"{percentile(totals, 0.9) * 1e3:.2f})"
    )
    workers = args.steps_per_second * batch * mean_total
    print(
        f"one worker makes {1 / mean_total:.1f} patches/s; {args.steps_per_second:g} steps/s of {batch} patches need "
        f"{workers:.2f} worker(s) at this speed (data.num_workers >= {math.ceil(workers)})"
    )


if __name__ == "__main__":
    main()
