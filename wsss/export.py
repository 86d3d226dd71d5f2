"""Export a trained segmenter to TorchScript and ONNX.

    python -m wsss.export logs/runs/<time>/stages/train_seg/model.pt --out exported/

Writes ``segmenter.ts`` (``torch.jit.load``), ``segmenter.onnx`` (ONNX Runtime, opset
``--opset``) and ``segmenter.json`` (input / output contract, classes). Both models take
``(B, 3, H, W)`` float32 RGB in ``[0, 1]`` (normalisation is inside the model) and return
``(B, num_classes + 1, H, W)`` logits (channel 0 = background); batch, height and width are
dynamic in the ONNX graph.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch.core.module import _jit_is_scripting
from torch import Tensor, nn

from wsss.io import atomic_path, write_json
from wsss.predict import load_run_model

log = logging.getLogger(__name__)


class Normalized(nn.Module):
    """``model((x - mean) / std)``: the exported models take plain [0, 1] RGB."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.model((images - self.mean) / self.std)


def export_segmenter(model: str | Path, out: str | Path, *, config: str | Path | None = None,
                     height: int = 320, width: int = 320, opset: int = 17) -> dict[str, Path]:
    """TorchScript + ONNX + JSON contract of a segmenter's ``model.pt``; returns their paths."""
    loaded = load_run_model(model, config)
    if loaded.kind != "segmenter":
        raise ValueError(f"{loaded.stage_dir}: export needs a segmenter (e.g. train_seg's model.pt), "
                         f"got the {loaded.kind} of stage {loaded.stage!r}")
    wrapped = Normalized(loaded.module.cpu().eval(), loaded.mean, loaded.std).eval()
    example = torch.rand(1, 3, height, width)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"torchscript": out / "segmenter.ts", "onnx": out / "segmenter.onnx",
             "json": out / "segmenter.json"}
    # Lightning's own flag: a LightningModule's `trainer` property raises when unattached, which
    # torch.jit.trace's attribute walk would hit.
    with torch.no_grad(), _jit_is_scripting():
        traced = torch.jit.trace(wrapped, example, check_trace=False)
        with atomic_path(paths["torchscript"], suffix=".ts") as tmp:
            traced.save(str(tmp))
        with atomic_path(paths["onnx"], suffix=".onnx") as tmp:
            torch.onnx.export(wrapped, (example,), str(tmp), input_names=["images"],
                              output_names=["logits"], opset_version=opset, dynamo=False,
                              dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                            "logits": {0: "batch", 2: "height", 3: "width"}})
    num_classes = int(getattr(loaded.module, "num_classes", 0))
    write_json(paths["json"], {
        "source": str(loaded.stage_dir / "model.pt"), "stage": loaded.stage,
        "input": {"name": "images", "shape": ["batch", 3, "height", "width"],
                  "dtype": "float32", "range": [0.0, 1.0], "channels": "RGB"},
        "output": {"name": "logits", "shape": ["batch", num_classes, "height", "width"],
                   "argmax": "label map: 0 background, c + 1 foreground class c"},
        "normalisation": {"mean": list(loaded.mean), "std": list(loaded.std), "inside_model": True},
        "opset": opset,
    })
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wsss-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a segmenter's model.pt (e.g. stages/train_seg/model.pt) or its dir")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", help="composed config (default: <run>/.hydra/config.yaml)")
    parser.add_argument("--height", type=int, default=320, help="tracing example height")
    parser.add_argument("--width", type=int, default=320, help="tracing example width")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = export_segmenter(args.model, args.out, config=args.config, height=args.height,
                             width=args.width, opset=args.opset)
    for kind, path in paths.items():
        log.info("%s: %s", kind, path)


if __name__ == "__main__":
    main()
