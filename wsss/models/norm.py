"""Frozen BatchNorm: fixed affine transform from stored statistics, never a training-mode BN."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with frozen statistics and affine parameters (PSA/SEAM/EPS/IRN's fixed BN).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` in every mode. All four
    tensors are buffers (no gradient, not returned by ``parameters()``), and :meth:`train` keeps
    the module in eval mode. It is not a ``torch.nn.modules.batchnorm._BatchNorm``, so
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (Lightning's ``sync_batchnorm=True``) leaves
    it alone: frozen layers stay frozen under DDP.

    The ``state_dict`` keys equal ``nn.BatchNorm2d``'s (``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``num_batches_tracked``), so weights saved from either load into the other; a
    file without ``num_batches_tracked`` (torchvision's old releases, the converted MXNet ResNet-38)
    loads too. The constructor accepts BatchNorm2d's arguments so it can be a torchvision
    ``norm_layer``.

    Shape:
        - x: ``(B, C, H, W)``; output: same shape.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None) -> None:  # fmt: skip
        super().__init__()
        del momentum, affine, track_running_stats  # accepted for norm_layer= compatibility
        kw = {"device": device, "dtype": dtype}
        self.num_features, self.eps = num_features, eps
        self.register_buffer("weight", torch.ones(num_features, **kw))
        self.register_buffer("bias", torch.zeros(num_features, **kw))
        self.register_buffer("running_mean", torch.zeros(num_features, **kw))
        self.register_buffer("running_var", torch.ones(num_features, **kw))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        self.training = False

    def train(self, mode: bool = True) -> FrozenBatchNorm2d:
        """Stay in eval mode whatever ``mode`` says (the statistics are frozen)."""
        return super().train(False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "num_batches_tracked"
        if key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> FrozenBatchNorm2d:
        """A frozen copy of ``bn`` (its current statistics and affine parameters)."""
        frozen = cls(bn.num_features, bn.eps)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.running_mean is not None:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        return frozen


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm (incl. SyncBatchNorm) inside ``module`` by a FrozenBatchNorm2d copy."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, FrozenBatchNorm2d.from_batchnorm(child))
        else:
            freeze_batchnorm(child)
    return module
