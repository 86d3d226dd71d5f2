"""Speed settings of network forwards (config node ``perf``), applied in one place.

Methods (LightningModules) know nothing about memory formats or compilation. The runner calls
:func:`configure` with ``cfg.perf`` once per run; then

* every Trainer built by ``StageContext.trainer`` gets :class:`PerfCallback`, which converts the
  module (and each batch's ``image``) to ``channels_last`` when fitting / predicting as set, and
  optionally ``torch.compile``\\ s the backbone; before a prediction (``make_cam``) it also folds
  eval BatchNorms into convolutions, fuses each convolution's ReLU / residual addition into it
  and sends the other 1x1 convolutions to oneDNN (:func:`prepare_for_predict`);
* every model loaded for inference (``wsss.pipeline.context.load_model``: CAMs outside
  ``make_cam``, evaluation, walks, ...) goes through :func:`prepare_for_inference`.

``channels_last`` (NHWC) changes only the memory layout: the same convolutions run with other
kernels, so results agree to float rounding (CAMs: max abs diff ~1e-6 of maps of order 1, see
``tests/test_perf.py``) and identical arg-max labels in practice.
"""

from __future__ import annotations

import logging
import operator
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = ["FusedConv2d", "OneDNNConv2d", "PerfCallback", "PerfSettings", "callbacks", "configure",
           "fold_batchnorm", "fuse_conv_postops", "images_to_channels_last", "prepare_for_inference",
           "prepare_for_predict", "settings", "to_channels_last", "use_onednn_convolutions"]


@dataclass(frozen=True)
class PerfSettings:
    """``perf`` config node. Defaults follow bench/run_all.py measurements (README, Performance).

    Attributes:
        channels_last_fit: NHWC network + inputs during Trainer fits (CPU, ResNet-18 at 112 px
            crops: 1.07x the time of NCHW, hence off by default).
        channels_last_predict: NHWC for inference (CAMs, evaluation, walks): ResNet-50 MS+flip
            CAMs on CPU take 0.69x the time of NCHW at 500x375, 0.97x at 250x188.
        compile: ``torch.compile`` the backbone for fits and Trainer predictions (GPU; needs
            a C++ toolchain on CPU, pays off only for long runs).
        fold_bn: fold eval BatchNorms into the preceding convolutions for Trainer predictions
            (``make_cam``'s multi-scale CAMs; :func:`fold_batchnorm`). Off in the small recipe
            (conf/recipe/small.yaml), whose results it would move in the last digits.
        onednn_conv: Trainer predictions run every CPU float32 convolution through oneDNN
            (:func:`use_onednn_convolutions`); PyTorch's own heuristic sends 1x1 convolutions to
            its native kernel when it has one thread, which is slower in NHWC.
        fuse_conv: Trainer predictions run a convolution's following ReLU and residual addition
            inside the oneDNN convolution (:func:`fuse_conv_postops`): one pass over each
            activation instead of three. Pairs with ``fold_bn`` (a convolution followed by a
            BatchNorm has nothing to fuse).
    """

    channels_last_fit: bool = False
    channels_last_predict: bool = True
    compile: bool = False
    fold_bn: bool = True
    onednn_conv: bool = True
    fuse_conv: bool = True


_SETTINGS = PerfSettings()


def configure(node: Mapping[str, Any] | None) -> PerfSettings:
    """Set the run's settings from ``cfg.perf`` (``None``/missing keys keep the defaults).

    ``channels_last`` may be a bool (both phases) or ``{fit: bool, predict: bool}``.
    """
    global _SETTINGS
    node = dict(node or {})
    unknown = set(node) - {"channels_last", "compile", "fold_bn", "onednn_conv", "fuse_conv"}
    if unknown:
        raise KeyError(f"perf has unknown keys {sorted(unknown)}; expected channels_last, compile, "
                       "fold_bn, onednn_conv, fuse_conv")
    fit, predict = PerfSettings.channels_last_fit, PerfSettings.channels_last_predict
    value = node.get("channels_last")
    if isinstance(value, bool):
        fit = predict = value
    elif value is not None:
        value = dict(value)
        if set(value) - {"fit", "predict"}:
            raise KeyError(f"perf.channels_last takes fit / predict, got {sorted(value)}")
        fit, predict = bool(value.get("fit", fit)), bool(value.get("predict", predict))
    _SETTINGS = PerfSettings(channels_last_fit=fit, channels_last_predict=predict,
                             compile=bool(node.get("compile", False)),
                             fold_bn=bool(node.get("fold_bn", PerfSettings.fold_bn)),
                             onednn_conv=bool(node.get("onednn_conv", PerfSettings.onednn_conv)),
                             fuse_conv=bool(node.get("fuse_conv", PerfSettings.fuse_conv)))
    return _SETTINGS


def settings() -> PerfSettings:
    return _SETTINGS


def to_channels_last(module: nn.Module) -> nn.Module:
    """Convert a module's 4-D parameters and buffers to NHWC in place (returns the module)."""
    return module.to(memory_format=torch.channels_last)


def prepare_for_inference(module: nn.Module) -> nn.Module:
    """Apply the inference settings to a loaded model (in place; returns it)."""
    if _SETTINGS.channels_last_predict:
        to_channels_last(module)
    return module


def _foldable_bn(module: nn.Module) -> bool:
    from wsss.models.norm import FrozenBatchNorm2d

    if isinstance(module, FrozenBatchNorm2d):
        return True
    return (isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training
            and module.running_mean is not None and module.running_var is not None)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from wsss.models.norm import FrozenBatchNorm2d

        return isinstance(m, (FrozenBatchNorm2d, FusedConv2d)) or super().is_leaf_module(m, qualname)


@torch.no_grad()
def _fold_pair(conv: nn.Conv2d, bn: nn.Module) -> None:
    """``conv`` followed by ``bn`` (eval) as one convolution: scale the weights, shift the bias."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma * (var + bn.eps).rsqrt()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    conv.weight.copy_(conv.weight.double() * scale.view(-1, *([1] * (conv.weight.ndim - 1))))
    new_bias = ((bias - mean) * scale + beta).to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(new_bias)


def _fold_in(module: nn.Module, uses: Counter) -> int:
    try:
        graph = _Tracer().trace(module)
    except Exception:  # noqa: BLE001 - untraceable code: look inside the children instead
        return sum(_fold_in(child, uses) for child in module.children())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        (user,) = node.users
        if user.op != "call_module" or user.args != (node,) or user.kwargs:
            continue
        conv, bn = module.get_submodule(node.target), module.get_submodule(user.target)
        if (type(conv) is not nn.Conv2d or not _foldable_bn(bn) or calls[node.target] != 1
                or calls[user.target] != 1 or uses[id(conv)] != 1 or uses[id(bn)] != 1
                or bn.running_var.shape[0] != conv.out_channels):
            continue
        _fold_pair(conv, bn)
        parent, _, name = str(user.target).rpartition(".")
        setattr(module.get_submodule(parent), name, nn.Identity())
        folded += 1
    return folded


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution into that convolution.

    For inference only (in place; the module must not be trained or saved afterwards): the
    convolution gets ``W' = W * s`` and ``b' = (b - mean) * s + beta`` with
    ``s = gamma / sqrt(var + eps)`` (float64), and the BatchNorm becomes ``nn.Identity``, which
    saves a full pass over every activation. Results agree with the unfolded network to float
    rounding (~1e-6 relative; ``tests/test_perf.py``). Pairs are found on a ``torch.fx`` trace:
    a ``Conv2d`` whose only consumer is the BatchNorm, each module called once in the whole
    network. A part that cannot be traced is searched child by child; what stays untraceable is
    left unfolded. Handles ``nn.BatchNorm2d`` in eval mode and
    :class:`~wsss.models.norm.FrozenBatchNorm2d`. Calling it again does nothing.

    Returns:
        The number of BatchNorm layers folded.
    """
    if getattr(module, "_wsss_bn_folded", False):
        return 0
    uses = Counter(id(m) for _, m in module.named_modules(remove_duplicate=False))
    folded = _fold_in(module, uses)
    module._wsss_bn_folded = True
    log.debug("folded %d BatchNorm layers into convolutions", folded)
    return folded


def _onednn_inference(x: Tensor, conv: nn.Conv2d) -> bool:
    """Whether ``conv(x)`` may be sent to oneDNN directly: CPU float32 inference (no gradients,
    no autocast), a 4-D input, zero padding given as numbers."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and conv.weight.dtype == torch.float32
            and x.ndim == 4 and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


class OneDNNConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose CPU float32 inference forward always uses oneDNN
    (``torch.mkldnn_convolution``); anything else (GPU, other dtypes, autocast, gradients,
    non-zero padding modes) takes the usual path. Same parameters and state_dict as ``nn.Conv2d``."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if _onednn_inference(input, self):
            return torch.mkldnn_convolution(input, weight, bias, self.padding, self.stride,
                                            self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)


def use_onednn_convolutions(module: nn.Module) -> int:
    """Turn the 1x1 stride-1 ``nn.Conv2d`` layers of an inference module into :class:`OneDNNConv2d`
    (in place; returns how many). Those are the convolutions PyTorch runs with its native kernel
    on one thread (other shapes already go to oneDNN); on NHWC inputs that kernel is slower
    (``bench/run_all.py`` CAM row). With more threads PyTorch picks oneDNN itself, so results
    are the same bits; on one thread they agree to float rounding."""
    if not torch.backends.mkldnn.is_available():
        return 0
    count = 0
    for m in module.modules():
        if (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1)
                and m.dilation == (1, 1)):
            m.__class__ = OneDNNConv2d
            count += 1
    return count


def _fused_format(x: Tensor) -> torch.memory_format | None:
    """The layout oneDNN keeps for ``x`` (its output has the same), None if neither dense one."""
    if x.is_contiguous():
        return torch.contiguous_format
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else None


class FusedConv2d(nn.Module):
    """``relu?(conv(x) [+ other])`` as one oneDNN convolution with post-ops
    (``torch.ops.mkldnn._convolution_pointwise``) for CPU float32 inference; the same unfused
    ops otherwise (GPU, other dtypes, autocast, gradients, shapes or layouts that do not line up).

    The ReLU is exact and the addition is the same float32 add, so results are the unfused
    network's to the bit whenever PyTorch would run the convolution on oneDNN too
    (``tests/test_perf.py``). With ``inplace_add`` the sum is accumulated into ``other``'s
    memory (oneDNN's cheaper "sum" post-op): :func:`fuse_conv_postops` sets it only where
    nothing reads ``other`` afterwards. Wraps (shares) the convolution module.
    """

    def __init__(self, conv: nn.Conv2d, relu: bool, add: bool, inplace_add: bool = False) -> None:
        super().__init__()
        self.conv = conv
        self.relu, self.add, self.inplace_add = bool(relu), bool(add), bool(inplace_add and add)

    def extra_repr(self) -> str:
        return f"relu={self.relu}, add={self.add}, inplace_add={self.inplace_add}"

    def _out_shape(self, x: Tensor) -> tuple[int, ...]:
        c = self.conv
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                zip(x.shape[-2:], c.padding, c.dilation, c.kernel_size, c.stride)]  # fmt: skip
        return (x.shape[0], c.out_channels, *size)

    def _fusable(self, x: Tensor, other: Tensor | None) -> bool:
        if not (_onednn_inference(x, self.conv) and torch.backends.mkldnn.is_available()):
            return False
        if other is None:
            return True
        fmt = _fused_format(x)
        return (fmt is not None and other.dtype == torch.float32 and other.device.type == "cpu"
                and tuple(other.shape) == self._out_shape(x) and other.is_contiguous(memory_format=fmt))

    def forward(self, x: Tensor, other: Tensor | None = None) -> Tensor:
        c = self.conv
        if (other is None) == self.add:
            raise ValueError(f"FusedConv2d(add={self.add}) called with{'out' if self.add else ''} a tensor to add")
        if not self._fusable(x, other):
            y = c(x)
            y = y + other if other is not None else y
            return torch.relu(y) if self.relu else y
        geometry = (list(c.padding), list(c.stride), list(c.dilation), c.groups)
        unary = "relu" if self.relu else None
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(x, c.weight, c.bias, *geometry, unary or "none", [], "")
        op = torch.ops.mkldnn._convolution_pointwise_ if self.inplace_add else torch.ops.mkldnn._convolution_pointwise
        args = (other, x) if self.inplace_add else (x, other)
        return op.binary(*args, c.weight, c.bias, *geometry, "add", None, unary, [], "")


_ADDS = {operator.add, operator.iadd, torch.add}


def _is_relu(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, torch.relu_)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_add(node: torch.fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ADDS:
        return len(node.args) == 2 and not node.kwargs
    return node.op == "call_method" and node.target in ("add", "add_") and len(node.args) == 2 and not node.kwargs


def _single_user(node: torch.fx.Node) -> torch.fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _dead_after(other: torch.fx.Node, add: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``other`` may be overwritten by ``add``: a fresh tensor made inside this graph
    (a convolution's output, not an input, a constant or a view), read by nothing after ``add``
    and by nothing before it that could keep an alias (only convolutions may read it too)."""
    if other.op != "call_module" or not isinstance(modules.get(other.target), (nn.Conv2d, FusedConv2d)):
        return False
    order = {n: i for i, n in enumerate(add.graph.nodes)}
    for user in other.users:
        if user is add:
            continue
        if order[user] > order[add] or user.op != "call_module" or \
                not isinstance(modules.get(user.target), (nn.Conv2d, FusedConv2d)):
            return False
    return True


def _fuse_graph(gm: torch.fx.GraphModule) -> int:
    graph, modules = gm.graph, dict(gm.named_modules())
    for node in list(graph.nodes):  # eval BatchNorms folded away leave Identity calls behind
        if node.op == "call_module" and type(modules.get(node.target)) is nn.Identity and len(node.args) == 1:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    fused = 0
    for node in list(graph.nodes):
        conv = modules.get(node.target) if node.op == "call_module" else None
        if type(conv) not in (nn.Conv2d, OneDNNConv2d) or len(node.args) != 1 or node.kwargs:
            continue
        user = _single_user(node)
        if user is None:
            continue
        other = add = None
        if _is_add(user) and user.args[0] is not user.args[1]:
            add = user
            other = add.args[1] if add.args[0] is node else add.args[0]
            if not isinstance(other, torch.fx.Node):
                continue
            after = _single_user(add)
            relu = after if after is not None and _is_relu(after, modules) else None
        elif _is_relu(user, modules):
            relu = user
        else:
            continue
        last = relu if relu is not None else add
        name = f"{node.target.replace('.', '_')}_fused"
        module = FusedConv2d(conv, relu=relu is not None, add=add is not None,
                             inplace_add=add is not None and _dead_after(other, add, modules))
        gm.add_submodule(name, module)
        modules[name] = module
        with graph.inserting_before(last):
            new = graph.call_module(name, (node.args[0],) if add is None else (node.args[0], other))
        last.replace_all_uses_with(new)
        for dead in (relu, add, node):
            if dead is not None and not dead.users:
                graph.erase_node(dead)
        fused += 1
    if fused:
        graph.lint()
        gm.recompile()
    return fused


def fuse_conv_postops(module: nn.Module) -> int:
    """Fuse each convolution's following ReLU and/or residual addition into it (in place; returns
    how many convolutions were fused). For CPU float32 inference, after :func:`fold_batchnorm`
    (a convolution followed by a BatchNorm has nothing to fuse).

    Every submodule whose ``forward`` traces with ``torch.fx`` (others are searched child by
    child) gets a rewritten graph as its ``forward``: ``conv [-> Identity] -> relu``,
    ``conv -> add`` and ``conv -> add -> relu`` become one :class:`FusedConv2d` call (the
    module's class, attributes and methods stay, so ``backbone.last`` or ``model.cam`` work as
    before). ResNets lose every separate ReLU and residual addition pass; results are the
    unfused network's to the bit where PyTorch runs the convolution on oneDNN. Calling it again
    does nothing.
    """
    fused = 0
    for m in list(module.modules()):
        if getattr(m, "_wsss_postops_fused", False) or isinstance(m, FusedConv2d) or \
                not any(isinstance(c, nn.Conv2d) for c in m.modules()):
            continue
        if m is not module and type(m).__module__.startswith("torch.nn") and not isinstance(m, nn.Sequential):
            continue  # a leaf of every trace (Conv2d itself, ...)
        try:
            graph = _Tracer().trace(m)
        except Exception as error:  # noqa: BLE001 - untraceable forward: its children are tried on their own
            log.debug("fuse_conv_postops: %s not traceable (%s)", type(m).__name__, error)
            continue
        gm = torch.fx.GraphModule(m, graph, class_name=f"{type(m).__name__}Fused")
        count = _fuse_graph(gm)
        if count:
            object.__setattr__(m, "_wsss_fused_graph", gm)  # not a submodule: no new state_dict keys
            m.forward = gm.forward
            fused += count
        m._wsss_postops_fused = True
    log.debug("fused %d convolutions with their ReLU / residual addition", fused)
    return fused


def prepare_for_predict(module: nn.Module, perf: PerfSettings | None = None) -> nn.Module:
    """What every Trainer prediction (``make_cam``) runs on, in place: eval BatchNorms folded
    (``fold_bn``), ReLUs and residual additions fused into the convolutions before them
    (``fuse_conv``), the other 1x1 convolutions through oneDNN (``onednn_conv``), NHWC
    (``channels_last.predict``). For inference only: call on an eval-mode module that is not
    trained or saved afterwards."""
    perf = perf or _SETTINGS
    if perf.fold_bn:
        fold_batchnorm(module)
    if perf.fuse_conv:
        fuse_conv_postops(module)
    if perf.onednn_conv:
        use_onednn_convolutions(module)
    return to_channels_last(module) if perf.channels_last_predict else module


def images_to_channels_last(batch: Any) -> None:
    """A batch dict's 4-D ``image`` made NHWC (in place), as every channels_last phase feeds it."""
    if isinstance(batch, dict):
        image = batch.get("image")
        if isinstance(image, torch.Tensor) and image.ndim == 4:
            batch["image"] = image.contiguous(memory_format=torch.channels_last)


class PerfCallback(L.Callback):
    """Applies :class:`PerfSettings` to a Trainer's module and batches."""

    def __init__(self, perf: PerfSettings | None = None) -> None:
        self.perf = perf or _SETTINGS
        self._phase_cl = False

    def _setup(self, pl_module: L.LightningModule, channels_last: bool) -> None:
        self._phase_cl = channels_last
        if channels_last:
            to_channels_last(pl_module)
        else:  # a module converted for an earlier phase goes back to NCHW
            pl_module.to(memory_format=torch.contiguous_format)
        backbone = getattr(pl_module, "backbone", None)
        if self.perf.compile and isinstance(backbone, nn.Module) and not getattr(backbone, "_wsss_compiled", False):
            backbone.compile()
            backbone._wsss_compiled = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._setup(pl_module, self.perf.channels_last_fit)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Trainer.predict runs in eval mode (Lightning sets it before this hook); the folded
        # module is for inference only (make_cam's CAMInference wraps a loaded classifier).
        if not pl_module.training:
            prepare_for_predict(pl_module, self.perf)
        self._setup(pl_module, self.perf.channels_last_predict)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._phase_cl:
            images_to_channels_last(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self._phase_cl:
            images_to_channels_last(batch)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self._phase_cl:
            images_to_channels_last(batch)


def callbacks() -> list[L.Callback]:
    """The callbacks ``StageContext.trainer`` adds to every Trainer."""
    return [PerfCallback(_SETTINGS)]
