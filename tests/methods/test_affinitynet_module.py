"""AffinityNetModule wiring: stride-8 embedding, label pooling, finite PSA loss with gradients."""

from __future__ import annotations

import functools

import torch

from wsss.data.labels import IGNORE
from wsss.methods.affinitynet import AffinityNetModule, majority_pool_label


def make(**kw) -> AffinityNetModule:
    torch.manual_seed(0)
    opt = functools.partial(torch.optim.SGD, lr=0.1)
    backbone = {"name": "resnet18", "output_stride": 16, "weights": None}
    return AffinityNetModule(backbone, ["layer2", "layer3", "layer4"], [8, 16, 32], opt, 10.0, 0.9,
                             output_stride=8, **kw)


def batch() -> dict:
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[:, 16:48, 16:48] = 3
    mask[1, :, :8] = IGNORE
    mask[0, 40:, 40:] = 7
    return {"image": torch.randn(2, 3, 64, 64, generator=g), "mask": mask}


def test_embedding_is_at_stride_8_with_summed_branch_channels() -> None:
    model = make().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 48))
    assert model.stride == 8
    assert out.shape == (1, 56, 8, 6)


def test_majority_pool_keeps_labels_and_ignore() -> None:
    label = torch.zeros(1, 16, 16, dtype=torch.long)
    label[0, :8, :8] = 5
    label[0, 8:, 8:] = IGNORE
    pooled = majority_pool_label(label, (2, 2))
    assert pooled.tolist() == [[[5, 0], [0, IGNORE]]]


def test_one_training_step_gives_a_finite_loss_and_head_gradients() -> None:
    model = make().train()
    loss = model.training_step(batch(), 0)
    assert torch.isfinite(loss) and loss.ndim == 0 and loss > 0
    loss.backward()
    assert model.embed.weight.grad is not None and model.embed.weight.grad.abs().sum() > 0
    assert all(b.weight.grad is not None for b in model.branches)
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert backbone_grads  # PSA fine-tunes the backbone


def test_parameter_groups_split_backbone_and_head() -> None:
    model = make()
    head = {id(p) for p in model.new_parameters()}
    backbone = {id(p) for p in model.pretrained_parameters()}
    assert head and backbone and not head & backbone
    assert head | backbone == {id(p) for p in model.parameters()}
