"""OAA: the accumulation callback (order independence, OAA's rule), attention drop, the IAM
loss wiring and the accumulated -> CAM conversion."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tests.conftest import compose_cfg
from wsss.data.datamodule import VOCDataModule
from wsss.functional.oaa import normalize_attention, oaa_iam_loss
from wsss.io import load_npz
from wsss.methods.oaa import IAMModule, OAAAccumulation, OAAModule
from wsss.pipeline.stages.accumulated_to_cams import accumulated_to_cam

BACKBONE = {"name": "resnet18", "output_stride": 16, "weights": None}
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make(cls=OAAModule, lr: float = 0.1, **kw):
    torch.manual_seed(0)
    opt = functools.partial(torch.optim.SGD, lr=lr)
    return cls(BACKBONE, 20, opt, 10.0, 0.9, extra_channels=32, **kw)


class _Ordered(VOCDataModule):
    """The same data module with the train order fixed (shuffle=False)."""

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return DataLoader(self._datasets["train"], batch_size=self.batch_size, shuffle=False,
                          drop_last=True)


def _accumulate(root, out_dir, shuffle: bool, epochs: int = 2) -> OAAAccumulation:
    model = make(lr=0.0, accumulate=False)
    for m in model.modules():  # lr 0 and frozen BN statistics: the weights never change
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0
    cls = VOCDataModule if shuffle else _Ordered
    dm = cls(root=str(root), train_split="train", val_split="val", mask_dir="SegmentationClassAug",
             batch_size=4, num_workers=0, crop_size=48, scale_range=[0.7, 1.3], color_jitter=None,
             mean=MEAN, std=STD, mode="classification")
    callback = OAAAccumulation(include_val=False)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, limit_val_batches=0, callbacks=[callback],
                        default_root_dir=str(out_dir), enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    return callback


def test_accumulation_is_order_independent_and_follows_oaas_rule(synthetic_root, tmp_path) -> None:
    shuffled = _accumulate(synthetic_root, tmp_path / "a", shuffle=True)
    ordered = _accumulate(synthetic_root, tmp_path / "b", shuffle=False)
    assert shuffled.accumulator.maps.keys() == ordered.accumulator.maps.keys()
    for key, value in shuffled.accumulator.maps.items():
        torch.testing.assert_close(value, ordered.accumulator.maps[key])
    files = sorted((tmp_path / "a/accumulated").glob("*.npz"))
    assert len(files) == len({i for i, _ in shuffled.accumulator.maps})
    # constant weights: every snapshot is the same, so each gt class holds its normalised map
    from wsss.data.datasets import ClassificationDataset
    from wsss.data.transforms import build_eval_transform
    from wsss.data.voc import VOCSource

    ds = ClassificationDataset(VOCSource(synthetic_root, "train"),
                               build_eval_transform(mean=MEAN, std=STD, resize_long_side=48))
    sample = ds[0]
    model = make(lr=0.0, accumulate=False).eval()
    with torch.no_grad():
        expected = normalize_attention(model.class_maps(sample["image"][None]))[0]
    saved = load_npz(tmp_path / "a/accumulated" / f"{sample['name']}.npz")
    assert saved["keys"].tolist() == np.flatnonzero(sample["labels"].numpy()).tolist()
    for k, m in zip(saved["keys"], saved["maps"]):
        np.testing.assert_allclose(m, expected[k].numpy(), atol=1e-5)


def test_one_epoch_accumulates_nothing(synthetic_root, tmp_path) -> None:
    assert len(_accumulate(synthetic_root, tmp_path, shuffle=True, epochs=1).accumulator) == 0


def test_attention_drop_zeroes_attended_pixels_after_the_first_epoch() -> None:
    model = make(accumulate=False).eval()
    labels = torch.zeros(2, 20)
    labels[:, 2] = 1
    image = torch.randn(2, 3, 48, 48) + 5.0  # no pixel is 0 before the drop
    callback = OAAAccumulation(attention_drop=True, drop_threshold=0.5, drop_p=1.0)
    first = {"image": image.clone(), "labels": labels}
    callback.on_train_batch_start(SimpleNamespace(current_epoch=0, global_rank=0), model, first, 0)
    assert torch.equal(first["image"], image)
    later = {"image": image.clone(), "labels": labels}
    callback.on_train_batch_start(SimpleNamespace(current_epoch=1, global_rank=0), model, later, 0)
    with torch.no_grad():
        att = normalize_attention(model.class_maps(image))[:, 2:3]
    mask = F.interpolate(att, size=(48, 48), mode="bilinear", align_corners=False) > 0.5
    assert mask.any() and not mask.all()
    assert torch.equal(later["image"] == 0, mask.expand_as(image))
    assert model.training is False  # the pre-pass restores the mode


def test_configure_callbacks_follows_the_flag() -> None:
    assert isinstance(make(accumulate=True).configure_callbacks()[0], OAAAccumulation)
    assert make(accumulate=False).configure_callbacks() == []


def test_iam_loss_uses_the_target_at_feature_resolution() -> None:
    model = make(IAMModule).eval()
    image, target = torch.randn(2, 3, 48, 48), torch.rand(2, 20, 48, 48)
    target[:, 5:] = 0
    loss = model.training_step({"image": image, "target": target}, 0)
    pred = model.class_maps(image)
    small = F.interpolate(target, size=pred.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(loss, oaa_iam_loss(pred, small))


def test_accumulated_to_cam_keys_are_the_gt_classes() -> None:
    labels = np.zeros(20, dtype=np.float32)
    labels[[3, 8]] = 1
    maps = np.stack([np.full((2, 2), 0.5, np.float32), np.eye(2, dtype=np.float32)])
    keys, cams = accumulated_to_cam(np.array([8, 11]), maps, labels, (4, 4))
    assert keys.tolist() == [3, 8] and cams.shape == (2, 4, 4) and cams.dtype == np.float32
    assert cams[0].max() == 0  # class 3 has no accumulated map
    assert cams[1].max() == pytest.approx(1.0, abs=1e-4)  # max-normalised at full size


def test_new_conv_init_follows_init_std() -> None:
    # OAA's N(0, 0.01) by default; None: Kaiming-normal (std sqrt(2 / fan_in)), zero biases
    official, kaiming = make(), make(init_std=None)
    w = official.extra[0].weight
    assert abs(w.std().item() - 0.01) < 1e-3
    w = kaiming.extra[0].weight
    fan_in = w[0].numel()
    assert abs(w.std().item() - (2 / fan_in) ** 0.5) < 0.1 * (2 / fan_in) ** 0.5
    assert all(not m.bias.detach().any()
               for m in [*kaiming.extra.modules(), kaiming.classifier]
               if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("recipe, init_std, new_lr_mult", [("small", None, 1), ("paper", 0.01, 10)])
@pytest.mark.parametrize("method", ["oaa", "oaa_iam"])
def test_oaa_config_keeps_official_init_and_lr_mult_in_the_paper_recipe(method, recipe, init_std, new_lr_mult) -> None:
    overrides = [f"method={method}", f"recipe={recipe}", "data.root=/data/voc"]
    method = compose_cfg(overrides, tiny=False).method
    assert method.init_std == init_std and method.new_lr_mult == new_lr_mult
