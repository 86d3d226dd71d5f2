"""TorchScript and ONNX exports of the segmenter agree with the PyTorch model on a batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.export import export_segmenter
from wsss.predict import load_run_model, to_tensor


def test_exports_match_pytorch(tiny_run: Path, tmp_path: Path) -> None:
    paths = export_segmenter(tiny_run / "stages/train_seg/model.pt", tmp_path, height=48, width=64)
    loaded = load_run_model(tiny_run / "stages/train_seg/model.pt")
    torch.manual_seed(0)
    batch = torch.rand(2, 3, 40, 56)  # not the tracing size: height/width are dynamic
    rgb = (batch.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    batch = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        normalized = torch.cat([to_tensor(im, loaded.mean, loaded.std) for im in rgb])
        expected = loaded.module(normalized).numpy()
        scripted = torch.jit.load(str(paths["torchscript"]))(batch).numpy()
    assert expected.shape == (2, loaded.module.num_classes, 40, 56)
    np.testing.assert_allclose(scripted, expected, atol=1e-4, rtol=1e-4)

    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(["logits"], {"images": batch.numpy()})
    np.testing.assert_allclose(onnx_out, expected, atol=1e-3, rtol=1e-3)
    assert (onnx_out.argmax(1) == expected.argmax(1)).mean() > 0.999

    contract = json.loads(paths["json"].read_text())
    assert contract["output"]["shape"][1] == loaded.module.num_classes
    assert contract["normalisation"]["inside_model"] is True


def test_export_refuses_a_classifier(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a segmenter"):
        export_segmenter(tiny_run / "stages/train_cls/model.pt", tmp_path)
