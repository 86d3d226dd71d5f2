"""IRNetModule wiring: stride-4 outputs, frozen backbone, 1x/10x groups, mean-shift calibration."""

from __future__ import annotations

import functools

import torch

from wsss.data.labels import IGNORE
from wsss.methods.irnet import IRNetModule
from wsss.pipeline.stages.calibrate_irn import mean_displacement


def make(freeze_backbone: bool = True) -> IRNetModule:
    torch.manual_seed(0)
    opt = functools.partial(torch.optim.SGD, lr=0.1)
    backbone = {"name": "resnet18", "output_stride": 16, "weights": None}
    return IRNetModule(backbone, opt, 10.0, 0.9, radius=5, freeze_backbone=freeze_backbone)


def batch() -> dict:
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[:, 8:32, 8:32] = 3
    mask[:, 36:60, 30:60] = 3
    mask[:, 30:36] = IGNORE
    return {"image": torch.randn(2, 3, 64, 64, generator=g), "mask": mask}


def test_outputs_are_at_stride_4_and_channels_scale_with_the_backbone() -> None:
    model = make().eval()
    with torch.no_grad():
        boundary, displacement = model(torch.randn(1, 3, 64, 48))
    assert boundary.shape == (1, 1, 16, 12) and displacement.shape == (1, 2, 16, 12)
    # resnet18 (512 channels) runs IRN's ResNet-50 plan at a quarter width: 32 -> 8 per level
    assert model.edge_out.in_channels == 8 * 5


def test_training_step_is_finite_and_the_frozen_backbone_gets_no_gradient() -> None:
    model = make().train()
    assert not model.backbone.training  # BatchNorm statistics stay frozen
    loss = model.training_step(batch(), 0)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.edge_out.weight.grad is not None
    assert model.dp_out[-1].weight.grad is not None and model.dp_out[-1].weight.grad.abs().sum() > 0


def test_fine_tuned_backbone_trains_at_the_boundary_lr_with_frozen_batchnorm() -> None:
    model = make(freeze_backbone=False).train()
    assert not model.backbone.training  # BatchNorm statistics stay frozen here too
    loss = model.training_step(batch(), 0)
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    model._trainer = type("T", (), {"estimated_stepping_batches": 10})()
    optimizer = model.configure_optimizers()["optimizer"]
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    groups = {g["lr"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert backbone_ids <= groups[0.1]  # with the boundary branch, not the 10x group
    assert not backbone_ids & groups[1.0]


def test_optimizer_gives_displacement_ten_times_the_boundary_lr() -> None:
    model = make()

    class _Trainer:
        estimated_stepping_batches = 10

    model._trainer = _Trainer()  # configure_optimizers only reads estimated_stepping_batches
    config = model.configure_optimizers()
    lrs = [g["lr"] for g in config["optimizer"].param_groups]
    assert lrs == [0.1, 1.0]
    grouped = {id(p) for g in config["optimizer"].param_groups for p in g["params"]}
    assert grouped.isdisjoint(id(p) for p in model.backbone.parameters())


def test_calibration_subtracts_the_mean_displacement_in_eval_mode_only() -> None:
    model = make()
    images = [torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    mean = mean_displacement(model, images)
    with torch.no_grad():
        _, raw = model(images[0])
        model.mean_shift.copy_(mean)
        _, shifted = model(images[0])
        model.train()
        _, training = model(images[0])
    torch.testing.assert_close(shifted, raw - mean.view(1, 2, 1, 1))
    torch.testing.assert_close(training, raw)
    # after calibration the displacements of the calibration images average to ~0
    model.eval()
    with torch.no_grad():
        means = torch.stack([model(im)[1].mean(dim=(0, 2, 3)) for im in images]).mean(0)
    torch.testing.assert_close(means, torch.zeros(2), atol=1e-5, rtol=0)
