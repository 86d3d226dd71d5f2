"""All performance figures of the project against in-run reference implementations.

    python bench/run_all.py                      # every figure, ~5-10 min on an idle 2-core CPU
    python bench/run_all.py --quick              # smaller CAM / CRF sizes (a smoke run)
    python bench/run_all.py --only psa_walk crf  # some figures
    python bench/run_all.py --out bench/results.md

Every figure compares wsss with a *reference*: our own plain implementation of the official
formulation, run in the same process on the same inputs (dense transition matrices squared
``logt`` times as PSA/IRN do; each CRF call on its own; every scale and flip as its own forward
pass; a hand-written PyTorch training loop). Reference and wsss runs alternate (A/B interleaved)
and the median is reported, so slow drifts of a shared machine hit both; the ratio
``wsss / reference`` (lower is faster) is the figure that carries over between machines. Peak
memory is measured in a fresh subprocess per variant (``ru_maxrss`` increase after inputs exist;
allocator-dependent, indicative). Torch runs with one intra-op thread unless a row says otherwise.
Outputs are checked against the reference (``check``: max abs difference relative to the
reference's max, or parameter difference after training).

The table is printed and written as markdown (``--out``; README "Performance" is copied from it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
warnings.filterwarnings("ignore", module="lightning")
logging.getLogger("lightning").setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------------
# helpers


def interleaved(variants: dict[str, Callable[[], object]], rounds: int,
                once: tuple[str, ...] = ()) -> dict[str, float]:
    """Median seconds per variant over ``rounds`` alternating rounds, after one warm-up each.

    Variants named in ``once`` (slow references) run once, in the first round, without warm-up.
    """
    for name, fn in variants.items():
        if name not in once:
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(rounds):
        for name, fn in variants.items():
            if name in once and i > 0:
                continue
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = torch.as_tensor(a).double(), torch.as_tensor(ref).double()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def peak_mib(bench: str, variant: str, quick: bool) -> float:
    """Peak RSS increase of one run of ``variant`` in a fresh process."""
    cmd = [sys.executable, __file__, "--memory-child", bench, variant] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_mib"])


def row(figure: str, ref_s: float, new_s: float, check: str, target: str = "",
        ref_mem: float | None = None, new_mem: float | None = None, ref_name: str = "") -> dict:
    return {"figure": figure, "reference": ref_name, "ref_s": ref_s, "new_s": new_s,
            "ratio": new_s / ref_s, "ref_mem": ref_mem, "new_mem": new_mem, "check": check,
            "target": target}  # fmt: skip


# --------------------------------------------------------------------------------------------
# random walks


def _pairs(height: int, width: int, radius: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Flat (source, target) indices of every in-map pair, grouped per offset (PSA/IRN order)."""
    from wsss.functional.affinity import neighbour_offsets

    src, dst, groups = [], [], []
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    for dy, dx in neighbour_offsets(radius):
        ok = (ys + dy >= 0) & (ys + dy < height) & (xs + dx >= 0) & (xs + dx < width)
        s = (ys * width + xs)[ok]
        src.append(s)
        dst.append(s + dy * width + dx)
        groups.append((dy, dx, ok))
    return torch.cat(src), torch.cat(dst), groups


def dense_walk(pair_values: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, num: int,
               seeds: torch.Tensor, beta: float, logt: int) -> torch.Tensor:
    """PSA ``infer_aff`` / IRN ``propagate_to_edge``: dense symmetric A with unit diagonal,
    ``A^β``, column-normalised, squared ``logt`` times, ``seeds @ T``."""
    aff = torch.eye(num)
    aff[src, dst] = pair_values
    aff[dst, src] = pair_values
    aff = aff.pow(beta)
    trans = aff / aff.sum(dim=0, keepdim=True)
    del aff
    for _ in range(logt):
        trans = trans @ trans
    return seeds.reshape(seeds.shape[0], -1) @ trans


def psa_inputs(quick: bool):
    gen = torch.Generator().manual_seed(0)
    h, w = 47, 63
    return (torch.rand(3, h, w, generator=gen), torch.rand(448, h, w, generator=gen) * 2, h, w)


def psa_reference(seeds, feats, h, w):
    src, dst, _ = _pairs(h, w, 5)
    flat = feats.reshape(feats.shape[0], -1)
    # PSA: gather both endpoints' features for every pair, channel-mean L1 distance.
    values = torch.exp(-(flat[:, src] - flat[:, dst]).abs().mean(dim=0))
    return dense_walk(values, src, dst, h * w, seeds, beta=8, logt=8).reshape(seeds.shape)


def psa_wsss(seeds, feats, h, w):
    from wsss.functional.random_walk import random_walk_from_features

    return random_walk_from_features(seeds, feats, radius=5, beta=8, logt=8)


def irn_inputs(size: tuple[int, int]):
    gen = torch.Generator().manual_seed(0)
    h, w = size
    return torch.rand(3, h, w, generator=gen), torch.rand(h, w, generator=gen) ** 4, h, w


def irn_reference(cams, boundary, h, w):
    from wsss.functional.random_walk import boundary_affinity

    src, dst, groups = _pairs(h, w, 5)
    aff = boundary_affinity(boundary, 5)  # path-max affinities (IRN PathIndex), cheap either way
    values = torch.cat([aff[p][ok] for p, (_, _, ok) in enumerate(groups)])
    seeds = cams * (1 - boundary)
    return dense_walk(values, src, dst, h * w, seeds, beta=10, logt=8).reshape(cams.shape)


def irn_wsss(cams, boundary, h, w):
    from wsss.functional.random_walk import irn_semantic_scores

    return irn_semantic_scores(cams, boundary, radius=5, beta=10, exp_times=8)


def bench_psa_walk(args) -> list[dict]:
    inputs = psa_inputs(args.quick)
    out = {}
    times = interleaved({"new": lambda: psa_wsss(*inputs),
                         "ref": lambda: out.setdefault("ref", psa_reference(*inputs))},
                        rounds=3, once=("ref",))  # fmt: skip
    check = rel_diff(psa_wsss(*inputs), out["ref"])
    return [row("PSA random walk, 47×63, D=448, K=3, t=256", times["ref"], times["new"],
                f"rel. diff {check:.1e}", "≤ 0.25 s, ≤ 50 MiB", peak_mib("psa_walk", "ref", args.quick),
                peak_mib("psa_walk", "new", args.quick), "dense T, 8 squarings (PSA)")]  # fmt: skip


def bench_irn_walk(args) -> list[dict]:
    inputs = irn_inputs((48, 64))
    out = {}
    times = interleaved({"new": lambda: irn_wsss(*inputs),
                         "ref": lambda: out.setdefault("ref", irn_reference(*inputs))},
                        rounds=3, once=("ref",))  # fmt: skip
    check = rel_diff(irn_wsss(*inputs), out["ref"])
    rows = [row("IRN random walk, 48×64, K=3, t=256", times["ref"], times["new"],
                f"rel. diff {check:.1e}", "", peak_mib("irn_walk", "ref", args.quick),
                peak_mib("irn_walk", "new", args.quick), "dense T, 8 squarings (IRN)")]  # fmt: skip
    # VOC size: the dense reference needs ~2 GB and minutes; its time is extrapolated as N³.
    voc = irn_inputs((94, 125))
    new = interleaved({"new": lambda: irn_wsss(*voc)}, rounds=3)["new"]
    scale = ((94 * 125) / (48 * 64)) ** 3
    rows.append(row("IRN random walk, VOC size 94×125, K=3", times["ref"] * scale, new,
                    "same code as 48×64", "≤ 0.4 s", None, peak_mib("irn_walk", "voc", args.quick),
                    "dense, extrapolated ×(N/N₄₈ₓ₆₄)³"))  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------
# dense CRF


def crf_inputs(quick: bool, count: int):
    h, w = (188, 250) if quick else (375, 500)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    items = []
    for i in range(count):
        base = np.stack([(xx * (3 + i)) % 256, (yy * 2) % 256, (xx + yy) % 256], -1)
        image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        logits = torch.randn(1, 21, h // 8 + 1, w // 8 + 1, generator=torch.Generator().manual_seed(i))
        probs = F.interpolate(logits * 3, size=(h, w), mode="bilinear").softmax(1)[0].numpy()
        items.append((image, probs))
    return items


CRF = {"n_iter": 10, "sxy_gaussian": 3, "compat_gaussian": 3, "sxy_bilateral": 80,
       "srgb_bilateral": 13, "compat_bilateral": 10}  # PSA crf_inference  # fmt: skip


def crf_reference(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """PSA ``crf_inference`` (pydensecrf, unary from the raw probabilities)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    h, w = image.shape[:2]
    d = dcrf.DenseCRF2D(w, h, probs.shape[0])
    d.setUnaryEnergy(unary_from_softmax(probs))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.ascontiguousarray(image), compat=10)
    return np.array(d.inference(10)).reshape(probs.shape)


class _CRFJob:
    def __init__(self, items) -> None:
        self.items = items

    def __call__(self, index: int) -> np.ndarray:
        from wsss.functional.crf import dense_crf

        image, probs = self.items[index]
        return dense_crf(image, probs, **CRF).argmax(0)


def bench_crf(args) -> list[dict]:
    from wsss.functional.crf import dense_crf
    from wsss.parallel import available_cores, map_per_image

    items = crf_inputs(args.quick, 1)
    image, probs = items[0]
    times = interleaved({"ref": lambda: crf_reference(image, probs),
                         "new": lambda: dense_crf(image, probs, **CRF)}, rounds=3)  # fmt: skip
    # wsss floors probabilities at 1e-8 where pydensecrf's unary_from_softmax clips at 1e-5, so
    # marginals differ slightly; the labels are what the stages use.
    agree = float((dense_crf(image, probs, **CRF).argmax(0) ==
                   crf_reference(image, probs).argmax(0)).mean())  # fmt: skip
    size = "188×250" if args.quick else "375×500"
    rows = [row(f"dense CRF, {size}, 21 labels (s/image)", times["ref"], times["new"],
                f"same label: {agree:.2%} of pixels", "", ref_name="pydensecrf as PSA crf_inference")]  # fmt: skip
    count = 4 if args.quick else 8
    job = _CRFJob(crf_inputs(args.quick, count))
    workers = min(2, available_cores())

    def run(n: int) -> list:
        return list(map_per_image(job, list(range(count)), workers=n, show_progress=False))

    par = interleaved({"one": lambda: run(1), "two": lambda: run(workers)}, rounds=2)
    same = all(np.array_equal(a, b) for a, b in zip(run(1), run(workers), strict=True))
    rows.append(row(f"CRF stage, {count} images, {workers} workers vs 1 (wall time)", par["one"],
                    par["two"], f"labels identical: {same}", "≤ 0.556 (≥ 1.8× faster)",
                    ref_name="one worker"))  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------
# CAM inference


def _cam_model(name: str):
    from wsss.methods.cam import CAMModule

    torch.manual_seed(0)
    model = CAMModule(backbone={"name": name, "output_stride": 16, "weights": None}, num_classes=20,
                      optimizer=lambda params: torch.optim.SGD(params, lr=0.1), new_lr_mult=10,
                      poly_power=0.9)  # fmt: skip
    for m in model.modules():  # non-trivial eval BN
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@torch.no_grad()
def cam_reference(model, image, scales, labels=None):
    """Every scale and flip as its own forward pass, NCHW (PSA ``infer_cls``); with ``labels``,
    then the present classes max-normalised as IRN ``make_cam`` / PSA keep them."""
    from wsss.functional.cam import normalize_cam, restrict_to_keys

    h, w = image.shape[-2:]
    total = 0
    for s in scales:
        x = F.interpolate(image, size=(round(h * s), round(w * s)), mode="bilinear",
                          align_corners=False)  # fmt: skip
        for flip in (False, True):
            out = F.relu(model.cam(x.flip(-1) if flip else x))
            out = out.flip(-1) if flip else out
            total = total + F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)[0]
    if labels is None:
        return total
    cams, _ = restrict_to_keys(total, labels)
    return normalize_cam(cams)


def bench_cam(args) -> list[dict]:
    """The reference vs ``make_cam``'s own code: ``CAMInference.predict_step`` on a network
    prepared by ``perf.prepare_for_predict`` and an image made NHWC as ``PerfCallback`` does;
    each row adds one ``perf`` setting, the last is the default (BN folded, ReLU and residual
    add fused into the oneDNN convolutions, the other 1x1 convs on oneDNN, channels_last)."""
    from wsss import perf
    from wsss.pipeline.cam_inference import CAMInference

    scales = (1.0, 0.5, 1.5, 2.0)
    w, h = (250, 188) if args.quick else (500, 375)
    name = "resnet50"
    defaults = perf.PerfSettings()
    plain = _cam_model(name)
    nhwc = perf.prepare_for_predict(_cam_model(name), perf.PerfSettings(fold_bn=False, onednn_conv=False,
                                                                        fuse_conv=False))
    folded = perf.prepare_for_predict(_cam_model(name), perf.PerfSettings(fuse_conv=False))
    default = perf.prepare_for_predict(_cam_model(name), defaults)
    image = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(20)
    labels[[4, 11, 14]] = 1  # three classes present

    def stage(model, channels_last: bool):
        batch = {"name": ["x"], "image": image.clone(), "labels": labels[None]}
        if channels_last:
            perf.images_to_channels_last(batch)
        with torch.no_grad():
            return CAMInference(model, scales, flip=True).predict_step(batch, 0)[0]["cams"]

    variants = {"ref": lambda: cam_reference(plain, image, scales, labels),
                "batched": lambda: stage(plain, False),
                "nhwc": lambda: stage(nhwc, True),
                "folded": lambda: stage(folded, True),
                "default": lambda: stage(default, defaults.channels_last_predict)}  # fmt: skip
    times = interleaved(variants, rounds=2, once=("ref",))  # plain's warm-up warms ref too
    ref = cam_reference(plain, image, scales, labels)
    diffs = {k: rel_diff(variants[k](), ref) for k in ("batched", "nhwc", "folded", "default")}
    same = torch.equal(variants["default"](), variants["folded"]())
    what = f"MS+flip CAM, ResNet-50, {w}×{h}, scales {list(scales)}, 3 classes present"
    ref_name = "each scale and flip alone"
    return [row(f"{what}, image+flip batched", times["ref"], times["batched"],
                f"rel. diff {diffs['batched']:.1e}", ref_name=ref_name),
            row(f"{what}, + channels_last", times["ref"], times["nhwc"],
                f"rel. diff {diffs['nhwc']:.1e}", ref_name=ref_name),
            row(f"{what}, + BN folded, 1x1 convs on oneDNN", times["ref"], times["folded"],
                f"rel. diff {diffs['folded']:.1e}", ref_name=ref_name),
            row(f"{what}, + ReLU and residual add fused into the convs: make_cam's code (default `perf`)",
                times["ref"], times["default"],
                f"rel. diff {diffs['default']:.1e}; bit-identical to the row above: {same}", "≤ 0.70",
                ref_name=ref_name)]  # fmt: skip


# --------------------------------------------------------------------------------------------
# training


def _batches(batch: int, crop: int, steps: int):
    gen = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(batch, 3, crop, crop, generator=gen),
             "labels": (torch.rand(batch, 20, generator=gen) > 0.8).float()} for _ in range(steps)]


def plain_loop(model, batches, poly_power: float) -> None:
    """Hand-written loop with the module's optimiser recipe (param groups, lr mult, poly)."""
    from wsss.methods.base import poly_lambda

    groups = [{"params": [p for p in params if p.requires_grad], "lr": 0.05 * mult}
              for params, mult in model.param_groups()]  # fmt: skip
    opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(len(batches), poly_power))
    model.train()
    for b in batches:
        opt.zero_grad()
        loss = F.multilabel_soft_margin_loss(model(b["image"]), b["labels"])
        loss.backward()
        opt.step()
        sched.step()


def _train_model(name: str):
    import functools

    from wsss.methods.cam import CAMModule

    torch.manual_seed(0)
    opt = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-4)
    return CAMModule(backbone={"name": name, "output_stride": 16, "weights": None}, num_classes=20,
                     optimizer=opt, new_lr_mult=10, poly_power=0.9)  # fmt: skip


def lightning_fit(model, batches) -> None:
    import lightning as L

    from wsss import perf

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=perf.callbacks())  # fmt: skip
    trainer.fit(model, torch.utils.data.DataLoader(batches, batch_size=None))


def bench_training(args) -> list[dict]:
    from wsss import perf

    steps = 4 if args.quick else 8
    batches = _batches(16, 112, steps)
    state = {}

    def run_plain() -> None:
        m = _train_model("resnet18")
        plain_loop(m, batches, 0.9)
        state["plain"] = m

    def run_lightning() -> None:
        m = _train_model("resnet18")
        lightning_fit(m, batches)
        state["lightning"] = m

    perf.configure(None)
    times = interleaved({"ref": run_plain, "new": run_lightning}, rounds=2)
    diff = max(float((a - b).abs().max()) for a, b in zip(
        state["plain"].state_dict().values(), state["lightning"].state_dict().values(), strict=True))
    rows = [row(f"training, ResNet-18 CAM, batch 16, 112 px, {steps} steps: Lightning vs plain loop",
                times["ref"], times["new"], f"max param diff {diff:.1e}",
                ref_name="hand-written PyTorch loop")]  # fmt: skip

    def run_format(cl: bool) -> None:
        perf.configure({"channels_last": {"fit": cl}})
        lightning_fit(_train_model("resnet18"), batches)

    fmt = interleaved({"nchw": lambda: run_format(False), "nhwc": lambda: run_format(True)}, rounds=2)
    perf.configure(None)
    rows.append(row("training, same, channels_last vs NCHW (decides perf.channels_last.fit)",
                    fmt["nchw"], fmt["nhwc"], "", "< 1 to turn it on", ref_name="NCHW"))  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------

BENCHES = {"irn_walk": bench_irn_walk, "psa_walk": bench_psa_walk, "crf": bench_crf,
           "cam": bench_cam, "training": bench_training}  # fmt: skip


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_increase(fn: Callable[[], object]) -> float:
    """Peak resident memory above the level before ``fn``, sampled every millisecond.

    (``ru_maxrss`` cannot be used: importing torch peaks far above where it settles.)"""
    import threading

    base, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], _rss_mib()) - base


def memory_child(bench: str, variant: str, quick: bool) -> None:
    """One run of one variant in this fresh process; prints the peak RSS increase."""
    if bench == "psa_walk":
        tiny = (torch.rand(3, 12, 12), torch.rand(448, 12, 12), 12, 12)
        fn = psa_reference if variant == "ref" else psa_wsss
        fn(*tiny)  # lazy initialisation outside the measurement
        inputs = psa_inputs(quick)
    else:
        fn = irn_reference if variant == "ref" else irn_wsss
        fn(*irn_inputs((12, 12)))
        inputs = irn_inputs((94, 125) if variant == "voc" else (48, 64))
    print(json.dumps({"peak_mib": peak_rss_increase(lambda: fn(*inputs))}))


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:.0f} s"


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| figure | reference (in-run) | reference | wsss | ratio | target | check |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        ref = fmt_s(r["ref_s"]) + (f", +{r['ref_mem']:.0f} MiB" if r["ref_mem"] is not None else "")
        new = fmt_s(r["new_s"]) + (f", +{r['new_mem']:.1f} MiB" if r["new_mem"] is not None else "")
        lines.append(f"| {r['figure']} | {r['reference']} | {ref} | {new} | {r['ratio']:.3f} | "
                     f"{r['target']} | {r['check']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller CAM/CRF inputs, fewer steps")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.md")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(*args.memory_child, args.quick)
        return
    rows: list[dict] = []
    start = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for name in args.only or BENCHES:
        t0 = time.perf_counter()
        new_rows = BENCHES[name](args)
        for r in new_rows:
            mem = "".join(f", {k} +{r[m]:.1f} MiB" for k, m in (("reference", "ref_mem"),
                          ("wsss", "new_mem")) if r[m] is not None)  # fmt: skip
            print(f"{r['figure']}: reference {fmt_s(r['ref_s'])}, wsss {fmt_s(r['new_s'])}, "
                  f"ratio {r['ratio']:.3f}{mem}  {r['check']}", flush=True)  # fmt: skip
        rows += new_rows
        print(f"  [{name}: {time.perf_counter() - t0:.0f} s]", flush=True)
        text = write_table(args, rows, load, start)  # after every benchmark: a partial table
    print("\n" + text)


def write_table(args, rows: list[dict], load: float, start: float) -> str:
    from wsss.parallel import available_cores

    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (f"Benchmarks (`python bench/run_all.py{' --quick' if args.quick else ''}`): "
              f"{platform.processor() or platform.machine()}, {available_cores()} usable cores, "
              f"torch {torch.__version__}, {args.threads} thread(s), load average {load:.1f} -> "
              f"{load_end:.1f}, {time.perf_counter() - start:.0f} s in all. Ratio = wsss / "
              "reference (lower is faster), medians of interleaved runs.")  # fmt: skip
    text = markdown(rows, header)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
