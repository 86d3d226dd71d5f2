"""Time and memory of the sparse random walks at VOC sizes (run by hand).

    python bench/bench_random_walk.py                  # irn + psa + irn_instances
    python bench/bench_random_walk.py --dense          # also the dense PSA reference (slow on CPU)
    python bench/bench_random_walk.py --device cuda

Each variant runs in its own subprocess so peak memory is per variant: on CPU the peak RSS
increase over the state after imports and input creation (``ru_maxrss`` delta; tracemalloc does
not see torch allocations), on CUDA ``torch.cuda.max_memory_allocated``. RSS deltas depend on the
allocator and are only indicative. On a busy machine, OpenMP spinning makes sparse mat-vecs up to
~10x slower with 2 threads than with 1: compare ``--threads`` settings on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor

VARIANTS = {
    # name: (grid side, seeds, description)
    "irn": (128, 3, "IRN boundary walk, stride-4 grid, r=5, beta=10, t=256"),
    "irn_instances": (128, 15, "IRN instance walk, 3 classes x 5 instances"),
    "psa": (64, 3, "PSA feature walk, stride-8 grid, D=448, r=5, beta=8, t=256"),
    "psa_dense": (64, 3, "PSA dense reference (IRN/PSA code path: dense T, 8 squarings)"),
}


def _make_run(variant: str, side: int, num_seeds: int, device: str) -> Callable[[], Tensor]:
    """Inputs of the given size and a closure running one walk on them."""
    from wsss.functional.affinity import neighbour_offsets, pairwise_affinity
    from wsss.functional.random_walk import irn_semantic_scores, random_walk_from_features

    gen = torch.Generator().manual_seed(0)
    seeds = torch.rand(num_seeds, side, side, generator=gen).to(device)
    if variant.startswith("irn"):
        boundary = (torch.rand(side, side, generator=gen) ** 4).to(device)
        return lambda: irn_semantic_scores(seeds, boundary)
    feats = torch.rand(448, side, side, generator=gen).to(device)
    if variant == "psa":
        return lambda: random_walk_from_features(seeds, feats)

    def dense_walk() -> Tensor:
        aff = pairwise_affinity(feats.unsqueeze(0), 5)[0]
        dense = torch.eye(side * side, device=device)
        for p, (dy, dx) in enumerate(neighbour_offsets(5)):
            for y in range(max(0, -dy), min(side, side - dy)):
                xs = torch.arange(max(0, -dx), min(side, side - dx), device=device)
                src, dst = y * side + xs, (y + dy) * side + xs + dx
                dense[src, dst] = aff[p, y, xs]
                dense[dst, src] = aff[p, y, xs]
        trans = dense.pow(8)
        trans = trans / trans.sum(0, keepdim=True)
        for _ in range(8):
            trans = trans @ trans
        return seeds.reshape(num_seeds, -1) @ trans

    return dense_walk


def _child(variant: str, device: str, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    side, num_seeds, _ = VARIANTS[variant]
    # Warm up on a tiny grid so lazy library initialisation does not count as the walk's memory.
    _make_run(variant, 12, num_seeds, device)()
    run = _make_run(variant, side, num_seeds, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = run()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else (rss1 - rss0) / 1024
    return {"seconds": seconds, "peak_mib": peak, "checksum": float(out.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=["irn", "irn_instances", "psa"])
    parser.add_argument("--dense", action="store_true", help="add the dense PSA reference")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.device, args.threads)))
        return
    variants = list(args.variants) + (["psa_dense"] if args.dense else [])
    print(f"device={args.device} threads={args.threads}")
    for variant in variants:
        cmd = [sys.executable, __file__, "--child", variant, "--device", args.device,
               "--threads", str(args.threads)]  # fmt: skip
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        side, num_seeds, what = VARIANTS[variant]
        print(
            f"{variant:14s} {side}x{side} K={num_seeds:<3d} {result['seconds']:8.2f} s "
            f"peak +{result['peak_mib']:8.1f} MiB   ({what})"
        )


if __name__ == "__main__":
    main()
