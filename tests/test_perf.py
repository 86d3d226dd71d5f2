import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss import perf
from wsss.functional.cam import multiscale_cam
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
    assert perf.settings() == perf.PerfSettings(False, True, False)
    assert perf.configure({"channels_last": True}) == perf.PerfSettings(True, True, False)
    assert perf.configure({"channels_last": {"fit": True, "predict": False}, "compile": True}) == \
        perf.PerfSettings(True, False, True)
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
