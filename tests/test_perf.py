import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss import perf
from wsss.functional.cam import multiscale_cam, normalize_cam
from wsss.methods.cam import CAMModule
from wsss.pipeline.context import load_model, save_model

CL = torch.channels_last


@pytest.fixture(autouse=True)
def _default_settings():
    perf.configure(None)
    yield
    perf.configure(None)


def _classifier() -> CAMModule:
    torch.manual_seed(0)
    model = CAMModule(backbone={"name": "resnet18", "output_stride": 16, "weights": None},
                      num_classes=5, optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                      new_lr_mult=10, poly_power=0.9)  # fmt: skip
    # Non-trivial BN statistics so eval-mode BN is not the identity.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_configure_forms_and_errors() -> None:
    assert perf.settings() == perf.PerfSettings(False, True, False, True, True)
    assert perf.configure({"channels_last": True}) == perf.PerfSettings(True, True, False)
    assert perf.configure({"channels_last": {"fit": True, "predict": False}, "compile": True}) == \
        perf.PerfSettings(True, False, True)
    assert perf.configure({"fold_bn": False, "onednn_conv": False}) == \
        perf.PerfSettings(False, True, False, False, False)
    assert perf.configure({"channels_last": {"predict": False}}).channels_last_fit is False
    with pytest.raises(KeyError, match="unknown keys"):
        perf.configure({"channel_last": True})
    with pytest.raises(KeyError, match="fit / predict"):
        perf.configure({"channels_last": {"train": True}})


def _per_pass_reference(model, image, scales) -> torch.Tensor:
    """The reference formulation: every scale and flip as its own forward (PSA infer_cls)."""
    h, w = image.shape[-2:]
    total = 0
    for s in scales:
        x = F.interpolate(image, size=(round(h * s), round(w * s)), mode="bilinear",
                          align_corners=False)  # fmt: skip
        for flip in (False, True):
            out = F.relu(model.cam(x.flip(-1) if flip else x))
            out = out.flip(-1) if flip else out
            total = total + F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)[0]
    return total


@torch.no_grad()
def test_batched_and_channels_last_cams_match_per_pass_reference() -> None:
    model = _classifier()
    image = torch.randn(1, 3, 29, 37)
    scales = (1.0, 0.5, 1.5)
    reference = _per_pass_reference(model, image, scales)
    batched = multiscale_cam(model.cam, image, scales=scales)
    perf.to_channels_last(model)
    assert model.classifier.weight.is_contiguous(memory_format=CL)
    nhwc = multiscale_cam(model.cam, image.contiguous(memory_format=CL), scales=scales)
    scale = reference.abs().max()
    assert scale > 0
    assert (batched - reference).abs().max() <= 1e-5 * scale
    assert (nhwc - reference).abs().max() <= 1e-5 * scale


def test_load_model_applies_inference_format(tmp_path) -> None:
    model = _classifier()
    save_model(model, tmp_path / "m.pt")
    loaded = load_model(_classifier(), tmp_path / "m.pt")
    assert loaded.classifier.weight.is_contiguous(memory_format=CL)
    assert all(p.is_contiguous(memory_format=CL) for p in loaded.parameters() if p.ndim == 4)
    perf.configure({"channels_last": False})
    plain = load_model(_classifier(), tmp_path / "m.pt")
    conv = next(p for p in plain.parameters() if p.ndim == 4 and p.shape[-1] > 1)
    assert not conv.is_contiguous(memory_format=CL)
    assert torch.equal(conv, dict(loaded.named_parameters())["backbone." + next(
        n for n, p in plain.backbone.named_parameters() if p.ndim == 4 and p.shape[-1] > 1)])


class _Recorder(L.LightningModule):
    """Records the memory format of the module and of each batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.seen: list[tuple[str, bool, bool]] = []

    def _record(self, phase: str, batch: dict) -> torch.Tensor:
        self.seen.append((phase, self.conv.weight.is_contiguous(memory_format=CL),
                          batch["image"].is_contiguous(memory_format=CL)))  # fmt: skip
        return self.conv(batch["image"]).mean()

    def training_step(self, batch, batch_idx):
        return self._record("fit", batch)

    def predict_step(self, batch, batch_idx):
        return self._record("predict", batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    data = [{"image": torch.randn(3, 8, 8)} for _ in range(2)]
    return torch.utils.data.DataLoader(data, batch_size=2)


@pytest.mark.parametrize("fit_cl", [False, True])
def test_callback_converts_module_and_batches_per_phase(fit_cl: bool) -> None:
    settings = perf.configure({"channels_last": {"fit": fit_cl, "predict": True}})
    module = _Recorder()
    kwargs = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False,
              "enable_progress_bar": False, "enable_model_summary": False}  # fmt: skip
    L.Trainer(max_epochs=1, callbacks=[perf.PerfCallback(settings)], **kwargs).fit(module, _loader())
    L.Trainer(callbacks=perf.callbacks(), **kwargs).predict(module, _loader())
    assert module.seen == [("fit", fit_cl, fit_cl), ("predict", True, True)]


def _cams(model, image) -> torch.Tensor:
    return multiscale_cam(model.cam, image, scales=(1.0, 0.5, 1.5))


@pytest.mark.parametrize("frozen", [False, True])
@torch.no_grad()
def test_fold_batchnorm_gives_the_same_cams(frozen: bool) -> None:
    model = _classifier()
    if frozen:  # IRN's FrozenBatchNorm2d everywhere
        from wsss.models.norm import FrozenBatchNorm2d, freeze_batchnorm

        freeze_batchnorm(model.backbone)
        assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    image = torch.randn(1, 3, 29, 37)
    reference = _cams(model, image)
    assert perf.fold_batchnorm(model) == 20  # ResNet-18: stem + 2 per block + 3 downsamples
    assert not any("BatchNorm" in type(m).__name__ for m in model.modules())
    assert perf.fold_batchnorm(model) == 0  # already folded
    folded = _cams(model, image)
    assert (folded - reference).abs().max() <= 1e-5 * reference.abs().max()
    assert not torch.equal(folded, reference)  # really another computation


class _Shared(nn.Module):
    """conv1's output feeds the BN and the output; conv2 runs twice; bn3 trains; a data-dependent
    branch makes ``forward`` untraceable, so only the traceable child is folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.conv3, self.bn3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.inner = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(x)
        y = self.bn1(a) + a
        y = self.bn2(self.conv2(self.conv2(y)))
        if y.sum() > 0:  # not symbolically traceable
            y = y + 1
        return self.inner(self.bn3(self.conv3(y)))


@torch.no_grad()
def test_fold_batchnorm_only_folds_safe_pairs() -> None:
    torch.manual_seed(0)
    model = _Shared().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    model.bn3.train()  # batch statistics: not a fixed affine map
    x = torch.randn(2, 3, 9, 11)
    reference = model(x)
    assert perf.fold_batchnorm(model) == 1
    assert isinstance(model.inner[1], nn.Identity) and model.inner[0].bias is not None
    assert all(isinstance(m, nn.BatchNorm2d) for m in (model.bn1, model.bn2, model.bn3))
    torch.testing.assert_close(model(x), reference, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_onednn_convolutions_keep_state_and_results() -> None:
    model = _classifier()
    image = torch.randn(1, 3, 29, 37)
    reference = _cams(model, image)
    keys = list(model.state_dict())
    # layer4's downsample (stride 1 at OS16) and the 1x1 classifier
    assert perf.use_onednn_convolutions(model) == 2
    assert list(model.state_dict()) == keys
    assert isinstance(model.backbone.layer4[0].downsample[0], perf.OneDNNConv2d)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # where PyTorch itself would pick its native 1x1 kernel
    try:
        out = _cams(model, image)
    finally:
        torch.set_num_threads(previous)
    assert (out - reference).abs().max() <= 1e-5 * reference.abs().max()
    with torch.enable_grad():  # training keeps the usual path (and its gradients)
        model.backbone.layer4[0].downsample[0](torch.randn(1, 256, 4, 4, requires_grad=True)).sum().backward()


@pytest.mark.parametrize("fmt", [CL, torch.contiguous_format])
@torch.no_grad()
def test_fuse_conv_postops_matches_the_unfused_network(fmt) -> None:
    model, reference = _classifier(), _classifier()
    perf.fold_batchnorm(model), perf.fold_batchnorm(reference)
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 29, 37).contiguous(memory_format=fmt)
    expected = reference.backbone(x)
    # ResNet-18: stem conv+ReLU, then per block conv1+ReLU and conv2+add+ReLU
    assert perf.fuse_conv_postops(model) > 0
    fused = [m for m in model.backbone._wsss_fused_graph.modules() if isinstance(m, perf.FusedConv2d)]
    assert len(fused) == 17 and sum(m.add for m in fused) == 8 and all(m.relu for m in fused)
    # layer1.0 adds the stem's max-pool output (not a conv's: no in-place); the 7 others may write
    # into their residual, which nothing reads afterwards
    assert sum(m.inplace_add for m in fused) == 7
    assert list(model.state_dict()) == keys and perf.fuse_conv_postops(model) == 0
    out = model.backbone(x)
    for level in expected:  # every returned level, even those a later block adds in place
        torch.testing.assert_close(out[level], expected[level], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.cam(x), reference.cam(x), rtol=1e-5, atol=1e-6)
    assert model.backbone.last == "layer4"  # attributes and methods stay
    with torch.enable_grad():  # gradients take the unfused path
        y = torch.randn(1, 3, 16, 16, requires_grad=True)
        model.backbone(y)["layer4"].sum().backward()
        assert y.grad is not None and y.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast too: bf16 as unfused
        assert model.backbone(x)["layer4"].dtype == reference.backbone(x)["layer4"].dtype == torch.bfloat16


class _Residual(nn.Module):
    """``b``'s output is added after ``c``, then read again: it must not be overwritten."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.b(x)
        out = torch.relu(self.c(F.relu(self.a(x))) + skip)
        return out, skip * 2


@torch.no_grad()
def test_fuse_conv_postops_never_overwrites_a_tensor_read_later() -> None:
    torch.manual_seed(0)
    model = _Residual().eval()
    x = torch.randn(2, 3, 9, 11)
    out, skip = model(x)
    assert perf.fuse_conv_postops(model) == 2
    fused = [m for m in model._wsss_fused_graph.modules() if isinstance(m, perf.FusedConv2d)]
    assert [(m.relu, m.add, m.inplace_add) for m in fused] == [(True, False, False), (True, True, False)]
    got_out, got_skip = model(x)
    torch.testing.assert_close(got_out, out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_skip, skip, rtol=0, atol=0)
    with pytest.raises(ValueError, match="without a tensor to add"):
        fused[1](torch.randn(2, 4, 9, 11))


def test_prediction_trainer_runs_the_prepared_network() -> None:
    """make_cam's path: Trainer.predict of CAMInference folds, routes and converts the network."""
    from wsss.pipeline.cam_inference import CAMInference

    model = _classifier()
    image = torch.randn(3, 29, 37)
    labels = torch.zeros(5)
    labels[[1, 3]] = 1
    with torch.no_grad():
        reference = normalize_cam(_per_pass_reference(model, image[None], (1.0, 0.5))[[1, 3]])
    loader = torch.utils.data.DataLoader([{"name": "a", "image": image, "labels": labels}], batch_size=1)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=perf.callbacks())  # fmt: skip
    (out,) = trainer.predict(CAMInference(model, (1.0, 0.5), flip=True), loader)
    assert out[0]["keys"].tolist() == [1, 3]
    assert (out[0]["cams"] - reference).abs().max() <= 1e-5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.classifier.weight.is_contiguous(memory_format=CL)


def test_config_perf_node_validates_and_recipes_choose_folding() -> None:
    from tests.conftest import compose_cfg

    small = compose_cfg(tiny=False)  # the default run: bit-identical numbers, no folding
    assert perf.configure(small.perf) == perf.PerfSettings(False, True, False, False, True)
    paper = compose_cfg(["recipe=paper"], tiny=False)  # VOC-size ResNets: folding pays
    assert perf.configure(paper.perf) == perf.PerfSettings(False, True, False, True, True)
    with pytest.raises(KeyError, match="unknown keys"):
        perf.configure({**small.perf, "fold": True})
