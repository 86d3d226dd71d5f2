"""ToCoModule on a 2-block random ViT: outputs, one training step, EMA teacher, lr schedule."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from wsss.methods.toco import ProjectionHead, ToCoModule, warmup_poly_lambda

BACKBONE = {"_target_": "wsss.models.vit.build_vit", "name": "custom", "aux_layers": [0],
            "model_kwargs": {"patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}}


def _module(**kw) -> ToCoModule:
    args = {"proj_dim": 32, "proj_hidden_dim": 32, "proj_bottleneck_dim": 16, "decoder_width": 16, "local_crop_size": 32,
                "num_local_crops": 2, "cam_scales": [1.0, 0.5], "par_iters": 2, "seg_start_step": -1}
    args.update(kw)
    module = ToCoModule(BACKBONE, 3, partial(torch.optim.AdamW, lr=1e-3), **args)
    module.log = lambda *a, **k: None
    return module


def test_outputs_and_cams() -> None:
    torch.manual_seed(0)
    m = _module().eval()
    x = torch.randn(2, 3, 64, 80)
    assert m(x).shape == (2, 4, 4, 5)  # background + 3 classes at stride 16
    assert m.cam(x).shape == (2, 3, 4, 5)
    cams, aux = m.multiscale_cams(x)
    assert cams.shape == aux.shape == (2, 3, 64, 80)
    assert cams.amin(dim=(2, 3)).abs().max() < 1e-6 and (cams.amax(dim=(2, 3)) <= 1).all()


def test_training_step_trains_every_head_and_moves_the_teacher() -> None:
    torch.manual_seed(0)
    m = _module().train()
    x = torch.randn(2, 3, 64, 64)
    x[:, :, 56:] = 0  # padded rows (exactly 0 after normalisation) are ignored by the labels
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    teacher = [p.clone() for p in m.proj_head_t.parameters()]
    loss = m.training_step({"image": x, "labels": labels}, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, module in (("classifier", m.classifier), ("aux", m.aux_classifier), ("decoder", m.decoder),
                         ("proj", m.proj_head), ("backbone", m.backbone)):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
    assert all(p.grad is None for p in m.proj_head_t.parameters())
    # The EMA step itself is a no-op at init (teacher = student); after a student change it moves 10 %.
    with torch.no_grad():
        for p in m.proj_head.parameters():
            p.add_(1.0)
    m._ema_update()
    for before, after in zip(teacher, m.proj_head_t.parameters()):
        assert torch.allclose(after, before + 0.1, atol=1e-5)


def test_projection_head_rows_have_unit_norm() -> None:
    head = ProjectionHead(8, out_dim=5, hidden_dim=16, bottleneck_dim=4)
    out = head(torch.randn(3, 8))
    assert out.shape == (3, 5)
    assert out.abs().max() <= 1.0 + 1e-6  # unit vector dot unit rows


def test_warmup_then_poly() -> None:
    f = warmup_poly_lambda(warmup_steps=10, total_steps=100, warmup_ratio=1e-6, power=0.9)
    assert f(0) == pytest.approx(1e-6)
    assert f(5) == pytest.approx(1 - 0.5 * (1 - 1e-6))
    assert f(10) == pytest.approx(0.9 ** 0.9)
    assert f(100) == 0.0


def test_needs_an_intermediate_level() -> None:
    with pytest.raises(ValueError, match="aux_layers"):
        ToCoModule({**BACKBONE, "aux_layers": []}, 3, partial(torch.optim.AdamW, lr=1e-3))
