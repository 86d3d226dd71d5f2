"""Generate the official-release fixtures of tests/models/official/ from the official code.

    python scripts/make_official_fixtures.py irn /tmp/official/irn   # a checkout of jiwoon-ahn/irn
    python scripts/make_official_fixtures.py irn_make_cam /tmp/official/irn  # its make_cam step
    python scripts/make_official_fixtures.py psa /tmp/official/psa   # a checkout of jiwoon-ahn/psa
    python scripts/make_official_fixtures.py psa_vgg /tmp/official/psa  # its VGG-16 variants
    python scripts/make_official_fixtures.py seam /tmp/official/seam # YudeWang/SEAM
    python scripts/make_official_fixtures.py eps /tmp/official/eps   # halbielee/EPS
    python scripts/make_official_fixtures.py oaa /tmp/official/oaa   # PengtaoJiang/OAA-PyTorch
    python scripts/make_official_fixtures.py sec /tmp/official/sec   # halbielee/SEC_pytorch

For each release the official model is built from the given checkout (never from this
repository, and only when this script runs), every tensor is filled from its *name* with
:func:`wsss.models.official.fill.fill_tensor`, the official forward/inference runs on a fixed
small input, and ``tests/fixtures/official/<release>_<model>.npz`` stores only the state-dict
key names, shapes and dtypes, the input and the outputs (no weights, no pickle). The tests
rebuild the weights from the names, load them through ``wsss.models.official`` and compare.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from wsss.models.official.fill import alias_groups, fill_tensor

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official"


def fill_model(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Fill ``model`` in place from its tensor names; return the fixture's key description."""
    state = model.state_dict(keep_vars=True)
    canonical = alias_groups(state)
    with torch.no_grad():
        for key, value in state.items():
            if canonical[key] == key:
                value.copy_(fill_tensor(key, value.shape, value.dtype))
    width = max(v.ndim for v in state.values())
    shapes = np.full((len(state), width), -1, dtype=np.int64)
    for row, value in enumerate(state.values()):
        shapes[row, : value.ndim] = value.shape
    return {
        "keys": np.array(list(state)),
        "canonical": np.array([canonical[k] for k in state]),
        "shapes": shapes,
        "dtypes": np.array([str(v.dtype).removeprefix("torch.") for v in state.values()]),
    }


def image_input(seed: int, height: int, width: int) -> torch.Tensor:
    """A fixed normalised image ``(1, 3, H, W)``: smooth blobs, so CAMs are not all noise."""
    rng = np.random.Generator(np.random.PCG64(seed))
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.zeros((3, height, width))
    for c in range(3):
        for _ in range(4):
            cy, cx, s, a = rng.random(4)
            image[c] += (
                (2 * a - 1) * 2 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 + 0.1 * s))
            )
    image += 0.1 * rng.standard_normal(image.shape)
    return torch.from_numpy(image[None].astype(np.float32))


def save(name: str, **arrays: np.ndarray) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.npz"
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in arrays.items()})
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


def _official_imports(code: Path) -> None:
    sys.path.insert(0, str(code))


def make_irn(code: Path) -> None:
    """IRN: CAM network (``net/resnet50_cam.py``) and IRNet (``net/resnet50_irn.py``)."""
    _official_imports(code)
    from misc import indexing
    from net import resnet50, resnet50_cam, resnet50_irn

    original = resnet50.resnet50
    resnet50.resnet50 = lambda pretrained=True, **kw: original(
        pretrained=False, **kw
    )  # no download

    # CAM network: Net.forward (logits) and CAM.forward (x[0] + flip(x[1]) of ReLU'd CAMs).
    cam_net = resnet50_cam.CAM()
    keys = fill_model(cam_net)
    cam_net.eval()
    image = image_input(0, 72, 88)
    with torch.no_grad():
        logits = resnet50_cam.Net.forward(cam_net, image)
        cam = cam_net(torch.cat([image, image.flip(-1)]))
    save("irn_cam", image=image.numpy(), logits=logits.numpy(), cam=cam.numpy(), **keys)

    # IRNet: keys of the saved AffinityDisplacementLoss (path indices included), outputs of
    # Net.forward on the padded flip batch and of EdgeDisplacement (make_sem_seg_labels).
    crop = 64
    path_index = indexing.PathIndex(radius=10, default_size=(32, 32))  # names only
    trained = resnet50_irn.AffinityDisplacementLoss(path_index)
    keys = fill_model(trained)
    infer = resnet50_irn.EdgeDisplacement(crop_size=crop, stride=4)
    infer.load_state_dict(trained.state_dict(), strict=False)
    infer.eval()
    image = image_input(1, 50, 60)
    batch = torch.cat([image, image.flip(-1)])
    with torch.no_grad():
        padded = torch.nn.functional.pad(
            batch, [0, crop - batch.shape[3], 0, crop - batch.shape[2]]
        )
        edge_raw, dp_raw = resnet50_irn.Net.forward(infer, padded)
        edge, dp = infer(batch)
    save(
        "irn_irn",
        image=image.numpy(),
        crop_size=np.int64(crop),
        edge_raw=edge_raw.numpy(),
        dp_raw=dp_raw.numpy(),
        edge=edge.numpy(),
        dp=dp.numpy(),
        **keys,
    )


def uint8_image(seed: int, height: int, width: int) -> np.ndarray:
    """A fixed ``(H, W, 3)`` uint8 image: smooth colour blobs plus noise."""
    blobs = image_input(seed, height, width)[0].numpy().transpose(1, 2, 0)
    return np.clip(np.round(128 + 50 * blobs), 0, 255).astype(np.uint8)


def make_irn_make_cam(code: Path) -> None:
    """IRN's ``step/make_cam.py`` (``_work``) on one small image: their
    ``VOC12ClassificationDatasetMSF`` (PIL-bicubic scales, ``TorchvisionNormalize``, flips), the
    CAM network and their strided (stride 4) / high-res CAM sizes and normalisation."""
    import contextlib
    import os
    import tempfile
    import types

    _official_imports(code)
    cwd = os.getcwd()
    os.chdir(code)  # voc12/dataloader.py reads voc12/cls_labels.npy relative to the cwd
    try:
        from net import resnet50, resnet50_cam
        from step import make_cam
        from voc12 import dataloader
    finally:
        os.chdir(cwd)
    original = resnet50.resnet50
    resnet50.resnet50 = lambda pretrained=True, **kw: original(pretrained=False, **kw)
    # CPU: the official loop calls .cuda() and counts GPUs.
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.cuda.device_count = lambda: 1
    make_cam.cuda = types.SimpleNamespace(device=lambda index: contextlib.nullcontext())

    model = resnet50_cam.CAM()
    keys = fill_model(model)
    model.eval()
    model.cuda = lambda *args, **kwargs: model
    image = uint8_image(12, 45, 61)  # odd sizes: 0.5 -> 22 x 30 (half to even), 1.5 -> 68 x 92
    label = np.zeros(20, np.float32)
    label[[3, 11]] = 1
    scales = (1.0, 0.5, 1.5, 2.0)
    dataloader.imageio = types.SimpleNamespace(imread=lambda path: image)
    dataset = dataloader.VOC12ClassificationDatasetMSF.__new__(dataloader.VOC12ClassificationDatasetMSF)
    # 20 copies: _work prints progress every len // 20 images (and divides by it).
    dataset.img_name_list = np.array([2007000032] * 20)
    dataset.label_list = np.stack([label] * 20)
    dataset.voc12_root, dataset.scales = "", scales
    dataset.img_normal = dataloader.TorchvisionNormalize()
    with tempfile.TemporaryDirectory() as out:
        args = types.SimpleNamespace(num_workers=0, cam_out_dir=out)
        with torch.no_grad():
            make_cam._work(0, model, [dataset], args)
        result = np.load(os.path.join(out, "2007_000032.npy"), allow_pickle=True).item()
    save("irn_make_cam", image=image, label=label, scales=np.array(scales),
         cam_keys=np.asarray(result["keys"]), strided=np.asarray(result["cam"]),
         high_res=np.asarray(result["high_res"]), **keys)


def make_psa(code: Path) -> None:
    """PSA: ResNet-38 classifier (``network/resnet38_cls.py``) and AffinityNet
    (``network/resnet38_aff.py``), with the dense random walk of ``infer_aff.py``."""
    _official_imports(code)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the official code calls .cuda()
    from network import resnet38_aff, resnet38_cls

    cls_net = resnet38_cls.Net()
    keys = fill_model(cls_net)
    cls_net.eval()
    image = image_input(2, 40, 56)
    with torch.no_grad():
        logits = cls_net(image)
        cam = cls_net.forward_cam(image)
    save("psa_cls", image=image.numpy(), logits=logits.numpy(), cam=cam.numpy(), **keys)

    aff_net = resnet38_aff.Net()
    keys = fill_model(aff_net)
    aff_net.eval()
    image = image_input(3, 72, 88)  # feature grid 9 x 11
    beta, logt = 8, 3
    with torch.no_grad():
        aff = aff_net(image)  # (1, 34, n_sources) pair affinities
        # infer_aff.py: dense affinities ^ beta, column-normalised, squared logt times.
        aff_mat = torch.pow(aff_net.forward(image, True), beta)
        trans_mat = aff_mat / torch.sum(aff_mat, dim=0, keepdim=True)
        for _ in range(logt):
            trans_mat = torch.matmul(trans_mat, trans_mat)
        rng = np.random.Generator(np.random.PCG64(4))
        seeds = torch.from_numpy(rng.random((3, 9, 11), dtype=np.float32))
        walk = torch.matmul(seeds.view(3, -1), trans_mat).view(3, 9, 11)
    save(
        "psa_aff",
        image=image.numpy(),
        aff=aff.numpy(),
        seeds=seeds.numpy(),
        walk=walk.numpy(),
        beta=np.int64(beta),
        logt=np.int64(logt),
        **keys,
    )


def make_psa_vgg(code: Path) -> None:
    """PSA's VGG-16 variants: classifier (``network/vgg16_cls.py``: logits and ``forward_cam``)
    and AffinityNet (``network/vgg16_aff.py``: pair affinities and ``infer_aff.py``'s walk).

    The input is in vgg16d's space (BGR, Caffe mean subtracted, 0..255 scale)."""
    _official_imports(code)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the official code calls .cuda()
    from network import vgg16_aff, vgg16_cls

    cls_net = vgg16_cls.Net()
    keys = fill_model(cls_net)
    cls_net.eval()
    image = 40 * image_input(9, 64, 80)
    with torch.no_grad():
        logits = cls_net(image)
        cam = cls_net.forward_cam(image)
    save("psa_vgg_cls", image=image.numpy(), logits=logits.numpy(), cam=cam.numpy(), **keys)
    _psa_infer_cls(cls_net)

    aff_net = vgg16_aff.Net()
    keys = fill_model(aff_net)
    aff_net.eval()
    image = 40 * image_input(10, 72, 96)  # feature grid 9 x 12
    beta, logt = 8, 3
    with torch.no_grad():
        aff = aff_net(image)
        aff_mat = torch.pow(aff_net.forward(image, True), beta)
        trans_mat = aff_mat / torch.sum(aff_mat, dim=0, keepdim=True)
        for _ in range(logt):
            trans_mat = torch.matmul(trans_mat, trans_mat)
        rng = np.random.Generator(np.random.PCG64(11))
        seeds = torch.from_numpy(rng.random((3, 9, 12), dtype=np.float32))
        walk = torch.matmul(seeds.view(3, -1), trans_mat).view(3, 9, 12)
    save("psa_vgg_aff", image=image.numpy(), aff=aff.numpy(), seeds=seeds.numpy(),
         walk=walk.numpy(), beta=np.int64(beta), logt=np.int64(logt), **keys)


def _psa_infer_cls(model: torch.nn.Module) -> None:
    """``infer_cls.py``'s CAMs of one 45 x 61 uint8 image with PSA's ``VOC12ClsDatasetMSF`` (PIL
    bicubic per scale, ``model.normalize``, flips) and its per-pass loop (upsample to the image
    size, mask by the label, flip back, sum, divide by max + 1e-5); weights: ``psa_vgg_cls``."""
    import PIL.Image
    import torch.nn.functional as F
    import torchvision
    import voc12.data
    from tool import imutils

    image = uint8_image(13, 45, 61)
    label = np.zeros(20, np.float32)
    label[[4, 14]] = 1
    scales = (1, 0.5, 1.5, 2.0)
    dataset = voc12.data.VOC12ClsDatasetMSF.__new__(voc12.data.VOC12ClsDatasetMSF)
    dataset.img_name_list, dataset.label_list = ["2007_000032"], np.stack([label])
    dataset.voc12_root, dataset.transform, dataset.scales, dataset.unit = "", None, scales, 1
    dataset.inter_transform = torchvision.transforms.Compose(
        [np.asarray, model.normalize, imutils.HWC_to_CHW])
    if not hasattr(PIL.Image, "CUBIC"):  # the alias PSA uses, dropped by Pillow 10 (same filter)
        PIL.Image.CUBIC = PIL.Image.Resampling.BICUBIC
    opened = PIL.Image.open
    PIL.Image.open = lambda path: PIL.Image.fromarray(image)
    try:
        _, img_list, label_t = dataset[0]
    finally:
        PIL.Image.open = opened
    cam_list = []
    with torch.no_grad():
        for i, img in enumerate(img_list):
            cam = model.forward_cam(torch.from_numpy(img)[None])
            cam = F.interpolate(cam, image.shape[:2], mode="bilinear", align_corners=False)[0]
            cam = cam.numpy() * label_t.clone().view(20, 1, 1).numpy()
            if i % 2 == 1:
                cam = np.flip(cam, axis=-1)
            cam_list.append(cam)
    sum_cam = np.sum(cam_list, axis=0)
    norm_cam = sum_cam / (np.max(sum_cam, (1, 2), keepdims=True) + 1e-5)
    keys = np.nonzero(label > 1e-5)[0]
    save("psa_vgg_make_cam", image=image, label=label, scales=np.array(scales, dtype=np.float64),
         cam_keys=keys, cams=norm_cam[keys].astype(np.float32))


def make_seam(code: Path) -> None:
    """SEAM: ``network/resnet38_SEAM.py`` forward (CAM and PCM output at the input size)."""
    _official_imports(code)
    from network import resnet38_SEAM

    net = resnet38_SEAM.Net()
    keys = fill_model(net)
    net.eval()
    image = image_input(5, 48, 64)
    with torch.no_grad():
        cam, cam_rv = net(image)
    save("seam", image=image.numpy(), cam=cam.numpy(), cam_rv=cam_rv.numpy(), **keys)


def make_eps(code: Path) -> None:
    """EPS: ``network/resnet38_eps.py`` (VOC: 21 maps, background last); forward and the
    softmax foreground maps of ``infer.py``'s ``predict_cam``."""
    _official_imports(code)
    from network import resnet38_eps

    net = resnet38_eps.Net(21)
    keys = fill_model(net)
    net.eval()
    image = image_input(6, 48, 64)
    with torch.no_grad():
        pred, cam = net(image)
        fg = torch.softmax(net.forward_cam(image), dim=1)[:, :-1]
    save("eps", image=image.numpy(), pred=pred.numpy(), cam=cam.numpy(), fg=fg.numpy(), **keys)


def make_oaa(code: Path) -> None:
    """OAA: ``models/vgg.py`` (``vgg16``, cfg D1) logits and class maps (no accumulation)."""
    import tempfile

    _official_imports(code)
    from models import vgg

    with tempfile.TemporaryDirectory() as runs:  # the official __init__ creates its run folders
        net = vgg.vgg16(num_classes=20, att_dir=runs, accu_dir=runs)
    keys = fill_model(net)
    net.eval()
    image = image_input(7, 56, 72)
    with torch.no_grad():
        logits = net(image)
        maps = net.get_heatmaps()
    save("oaa", image=image.numpy(), logits=logits.numpy(), maps=maps.numpy(), **keys)


def make_sec(code: Path) -> None:
    """SEC_pytorch: ``network/DeepLab_LargeFOV.py`` (21 outputs) fc8 scores."""
    _official_imports(code)
    from network.DeepLab_LargeFOV import deeplab_large_fov

    net = deeplab_large_fov(21)
    keys = fill_model(net)
    net.eval()
    image = image_input(8, 56, 72)
    with torch.no_grad():
        scores = net(image)
    save("sec", image=image.numpy(), scores=scores.numpy(), **keys)


RELEASES = {
    "irn": make_irn,
    "irn_make_cam": make_irn_make_cam,
    "psa": make_psa,
    "psa_vgg": make_psa_vgg,
    "seam": make_seam,
    "eps": make_eps,
    "oaa": make_oaa,
    "sec": make_sec,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("release", choices=sorted(RELEASES))
    parser.add_argument("code", type=Path, help="checkout of the official repository")
    args = parser.parse_args()
    if not args.code.is_dir():
        parser.error(f"{args.code} is not a directory")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    RELEASES[args.release](args.code.resolve())


if __name__ == "__main__":
    main()
