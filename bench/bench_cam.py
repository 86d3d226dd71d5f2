"""Benchmark: multi-scale CAM generation overhead and classifier training throughput.

    python bench/bench_cam.py --backbone resnet50 --size 500 375 --repeats 5

Reports, per image: the time of the bare backbone forward passes that multi-scale + flip CAM
inference needs (same scales, batch of 2 per scale), the time of `multiscale_cam` +
`restrict_to_keys` + `normalize_cam` + writing the .npz, and their ratio (the overhead of
everything that is not the network). Then training images/s of the CAM module at a crop size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from wsss.functional.cam import multiscale_cam, normalize_cam, restrict_to_keys
from wsss.io import save_npz
from wsss.methods.cam import CAMModule


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--output-stride", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--scales", type=float, nargs="+", default=(1.0, 0.5, 1.5, 2.0))
    parser.add_argument("--classes", type=int, default=2, help="present classes per image")
    parser.add_argument("--crop", type=int, default=448)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = CAMModule(
        backbone={"name": args.backbone, "output_stride": args.output_stride, "weights": None},
        num_classes=20, optimizer=lambda params: torch.optim.SGD(params, lr=0.01), new_lr_mult=10,
        poly_power=0.9,
    ).to(device).eval()
    width, height = args.size
    image = torch.randn(1, 3, height, width, device=device)
    labels = torch.zeros(20, device=device)
    labels[: args.classes] = 1
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @torch.no_grad()
    def bare() -> None:
        for scale in args.scales:
            size = (round(height * scale), round(width * scale))
            x = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
            model.backbone(torch.cat([x, x.flip(-1)]))
        sync()

    out_dir = Path(tempfile.mkdtemp())

    def full() -> None:
        cams = multiscale_cam(model.cam, image, scales=args.scales, flip=True)
        present, keys = restrict_to_keys(cams, labels)
        normed = normalize_cam(present).cpu().numpy()
        save_npz(out_dir / "x.npz", keys=keys.cpu().numpy(), cams=normed)
        sync()

    t_bare, t_full = timed(bare, args.repeats), timed(full, args.repeats)
    print(f"device {device}, {args.backbone} OS{args.output_stride}, image {width}x{height}, "
          f"scales {list(args.scales)} + flip, {args.classes} classes")
    print(f"bare backbone forwards: {t_bare * 1000:8.1f} ms/image")
    print(f"multi-scale CAM + save: {t_full * 1000:8.1f} ms/image   ratio {t_full / t_bare:.3f}")

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = torch.randn(args.batch, 3, args.crop, args.crop, device=device)
    targets = (torch.rand(args.batch, 20, device=device) > 0.8).float()

    def step() -> None:
        optimizer.zero_grad()
        F.multilabel_soft_margin_loss(model(batch), targets).backward()
        optimizer.step()
        sync()

    t_step = timed(step, args.repeats)
    print(f"training: {args.batch / t_step:8.1f} images/s (batch {args.batch}, crop {args.crop})")


if __name__ == "__main__":
    main()
