"""Phenomenon measures of every label-producing stage of finished runs (:mod:`wsss.metrics.phenomena`).

    python -m wsss.metrics.phenomena RUN_DIR [RUN_DIR ...] [--stages S ...] [--out table.md] [--json out.json]

For each finished stage (``stages/<name>/manifest.json``) the label maps it wrote are scored against
the GT masks (``data.eval_mask_dir``) of the data tree the run used (recorded in the stages'
manifests, else ``<run>/.hydra/config.yaml``), on the images its own mIoU is reported on: the
protocol's eval split (``eval_seg``: its ``split``) minus the held-out threshold images. On a
synthetic tree the part and background-kind maps of its ``SyntheticMeta/`` sidecar add body recall
and the typical-context false positives (the sidecar is added to an older tree first).

What is scored per stage: ``make_cam``-format stages (``cam_dir``): the CAMs binarised at the
background threshold chosen by the ``eval_cam`` stage that read them; ``make_pseudo_labels``:
``labels`` and ``labels_crf``; every stage naming a ``label_dir`` (random walk, IRN, OAA gen_gt,
CGL, ...): that folder; ``mcof``: every ``iter_*/labels``; ``self_train``: every ``round_*/labels``;
``make_cues``: the SEC cue grids (partial labels: GT is resized to the grid, ``labelled`` is the
share of pixels with a cue, recall counts pixels without a cue as missed); ``eval_seg``: the saved
``predictions`` (after its post-processing) and ``predictions_single`` (the segmenter's own
single-scale output, when post-processing changes it). One table row per output.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from wsss.data.sources import open_source
from wsss.data.synthetic import KNOBS, load_synthetic_meta, synthetic_root
from wsss.functional.cam import cams_to_label
from wsss.io import load_label_png, load_npz, read_json
from wsss.pipeline.context import METRICS_FILE
from wsss.pipeline.manifest import MANIFEST_FILE
from wsss.pipeline.protocol import holdout_ids
from wsss.pipeline.scoring import PhenomenaScore

# (column title, result key)
COLUMNS = [("recall", "recall"), ("precision", "precision"), ("body recall", "body_recall"),
           ("key recall", "key_recall"), ("labelled", "labelled_fraction"), ("context FP", "context_fp"),
           ("ctx FP typical", "context_fp_typical"), ("ctx FP other", "context_fp_other"),
           ("boundary F", "boundary_f")]  # fmt: skip
CAM_STAGES_KEY = "cam_dir"  # metrics key of make_cam-format stages


# --------------------------------------------------------------------------- run settings
def _manifests(run: Path) -> dict[str, dict]:
    """Finished stages of ``run``: {name: manifest}, in run order (pipeline.order, else creation)."""
    found = {p.parent.name: read_json(p) for p in sorted(run.glob(f"stages/*/{MANIFEST_FILE}"))}
    order: list[str] = []
    hydra_cfg = run / ".hydra" / "config.yaml"
    if hydra_cfg.is_file():
        order = [str(s) for s in (OmegaConf.select(OmegaConf.load(hydra_cfg), "pipeline.order") or [])]
    rest = sorted((n for n in found if n not in order), key=lambda n: str(found[n].get("created", "")))
    return {n: found[n] for n in [*order, *rest] if n in found}


def run_settings(run: Path, manifests: dict[str, dict]) -> dict[str, Any]:
    """``{"data": ..., "protocol": ...}`` the run used: from a stage manifest recording both
    (resolved when the stage ran), else the run's ``.hydra/config.yaml`` (resolved now)."""
    for manifest in manifests.values():
        glob = (manifest.get("config") or {}).get("global") or {}
        if "data" in glob and "protocol" in glob and glob["protocol"].get("eval_split"):
            return {"data": glob["data"], "protocol": glob["protocol"]}
    hydra_cfg = run / ".hydra" / "config.yaml"
    if hydra_cfg.is_file():
        from wsss.conf import register_resolvers

        register_resolvers()
        cfg = OmegaConf.load(hydra_cfg)
        return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "protocol")}
    raise FileNotFoundError(f"{run}: no stage manifest records the data and protocol, and there is no "
                            ".hydra/config.yaml; cannot tell which GT masks to score against")


def _existing(path: Path, run: Path) -> Path:
    """A relative path as the run saw it: tried from the current directory, then from the
    run directory's ancestors (``python train.py`` resolves ``./data`` from where it started)."""
    if path.is_absolute() or path.exists():
        return path
    for base in run.resolve().parents:
        if (base / path).exists():
            return base / path
    return path


def data_root(run: Path, data: dict) -> Path:
    """The dataset root of the run: ``data.root``, else its synthetic tree (knob-specific root)."""
    if data.get("root") is not None:
        root = _existing(Path(str(data["root"])).expanduser(), run)
    else:
        syn = data.get("synthetic") or {}
        if not syn.get("root"):
            raise ValueError(f"{run}: data.root is null and there is no data.synthetic.root")
        knobs = {k: float(syn.get(k, v)) for k, v in KNOBS.items()}
        root = _existing(synthetic_root(Path(str(syn["root"])), **knobs), run)
    if not root.is_dir():
        raise FileNotFoundError(f"{run}: its data root {root} does not exist (regenerate the synthetic "
                                "tree with the run's data.synthetic settings, or run from the directory "
                                "the run was started in)")
    return root


class RunData:
    """GT sources and evaluated ids of one run's data."""

    def __init__(self, run: Path, settings: dict[str, Any]) -> None:
        self.run, self.data, self.protocol = run, settings["data"], settings["protocol"]
        self.root = data_root(run, self.data)
        self.meta = load_synthetic_meta(self.root)
        held_src = self._source(self.protocol["holdout_split"])
        self.held = set(holdout_ids(held_src.ids, float(self.protocol["holdout_fraction"]),
                                    int(self.protocol["seed"])))  # fmt: skip

    def _source(self, split: str):
        return open_source(self.data.get("source"), self.root, split, splits=self.data.get("splits"),
                           mask_dir=self.data.get("eval_mask_dir"), check_images=False)  # fmt: skip

    def scorer(self, split: str | None = None) -> tuple[PhenomenaScore, set[str]]:
        """(a fresh score against ``split``'s GT, the ids it reports: the split minus held-out ids)."""
        src = self._source(split or self.protocol["eval_split"])
        return PhenomenaScore(src, self.meta), {i for i in src.ids if i not in self.held}


# --------------------------------------------------------------------------- stage outputs
def _target(manifest: dict) -> str:
    """The stage module's short name (``make_pseudo_labels``) from the manifest's ``_target_``."""
    target = str(((manifest.get("config") or {}).get("stage") or {}).get("_target_", ""))
    parts = target.split(".")
    return parts[-2] if len(parts) >= 2 else target


def cam_threshold(stage: str, manifests: dict[str, dict], run: Path) -> float | None:
    """The background threshold an ``eval_cam`` stage of the run chose for ``stage``'s CAMs."""
    for name, manifest in manifests.items():
        if _target(manifest) != "eval_cam":
            continue
        read = {v.get("stage") for v in (manifest.get("inputs") or {}).values()}
        metrics_file = run / "stages" / name / METRICS_FILE
        if stage in read and metrics_file.is_file():
            value = read_json(metrics_file).get("threshold")
            return None if value is None else float(value)
    return None


def stage_outputs(run: Path, name: str, manifests: dict[str, dict]) -> list[tuple[str, str, Any]]:
    """[(output label, "labels" | "cams", folder or (folder, threshold))] of one finished stage."""
    stage_dir = run / "stages" / name
    metrics = read_json(stage_dir / METRICS_FILE) if (stage_dir / METRICS_FILE).is_file() else {}
    target = _target(manifests[name])
    out: list[tuple[str, str, Any]] = []
    if CAM_STAGES_KEY in metrics:
        threshold = cam_threshold(name, manifests, run)
        if threshold is not None:
            out.append((f"CAMs > {threshold:g}", "cams", (stage_dir / metrics[CAM_STAGES_KEY], threshold)))
    folders: list[str] = []
    if target == "make_pseudo_labels":
        folders += ["labels", "labels_crf"]
    if target == "mcof":
        folders += sorted((p.relative_to(stage_dir).as_posix() for p in stage_dir.glob("iter_*/labels")),
                          key=lambda f: int(f.split("/")[0].split("_")[1]))  # fmt: skip
    if target == "self_train":
        folders += sorted((p.relative_to(stage_dir).as_posix() for p in stage_dir.glob("round_*/labels")),
                          key=lambda f: int(f.split("/")[0].split("_")[1]))  # fmt: skip
    for key in ("label_dir", "cue_dir"):
        if isinstance(metrics.get(key), str):
            folders.append(metrics[key])
    if target == "eval_seg":
        folders += ["predictions_single", "predictions"]
    for folder in dict.fromkeys(folders):
        if (stage_dir / folder).is_dir():
            out.append((folder, "labels", stage_dir / folder))
    return out


def score_output(kind: str, payload: Any, scorer: PhenomenaScore, ids: Iterable[str]) -> dict[str, Any]:
    """Feed one output's files (``ids`` that have one) to ``scorer``; its result."""
    for image_id in sorted(ids):
        if kind == "cams":
            folder, threshold = payload
            path = folder / f"{image_id}.npz"
            if not path.is_file():
                continue
            arrays = load_npz(path)
            label = cams_to_label(torch.from_numpy(arrays["cams"]), torch.from_numpy(arrays["keys"]), threshold)
            scorer.update(image_id, label.numpy())
        else:
            path = payload / f"{image_id}.png"
            if path.is_file():
                scorer.update(image_id, load_label_png(path))
    return scorer.result()


def measure_run(run: Path, stages: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per scored output of the run's finished stages: ``{"run", "stage", "output", **result}``."""
    manifests = _manifests(run)
    if not manifests:
        raise FileNotFoundError(f"{run}: no finished stage (stages/<name>/{MANIFEST_FILE})")
    data = RunData(run, run_settings(run, manifests))
    rows = []
    for name in manifests:
        if stages and name not in stages:
            continue
        split = None
        if _target(manifests[name]) == "eval_seg":
            split = ((manifests[name].get("config") or {}).get("stage") or {}).get("split")
        for output, kind, payload in stage_outputs(run, name, manifests):
            scorer, ids = data.scorer(split)
            result = score_output(kind, payload, scorer, ids)
            rows.append({"run": run.name, "stage": name, "output": output, **result})
    return rows


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def to_markdown(rows: Sequence[dict[str, Any]], tolerance_note: bool = True) -> str:
    head = ["run", "stage", "output", "images", *(c[0] for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in rows:
        cells = [row["run"], row["stage"], row["output"], str(row["num_images"]),
                 *(_fmt(row.get(key)) for _, key in COLUMNS)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    if tolerance_note and rows:
        frac = rows[0].get("boundary_tolerance_fraction")
        lines.append("")
        lines.append(f"Pixel counts pooled over the images; boundary F tolerance ceil({frac} x image diagonal) px; "
                     "definitions: docs/methods.md, Phenomenon measures.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsss.metrics.phenomena",
                                     description="Phenomenon measures of the label maps of finished runs.")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (logs/runs/...)")
    parser.add_argument("--stages", nargs="+", help="only these stage names")
    parser.add_argument("--names", nargs="+", help="row labels, one per run (default: the directory names)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "stages").is_dir()]
    if missing:
        parser.error(f"not run directories (no stages/ inside): {missing}")
    if args.names and len(args.names) != len(args.runs):
        parser.error(f"--names needs one label per run ({len(args.runs)}), got {len(args.names)}")
    rows = []
    for index, run in enumerate(args.runs):
        for row in measure_run(run, args.stages):
            rows.append({**row, "run": args.names[index]} if args.names else row)
    text = to_markdown(rows)
    print(text)
    if args.out:
        from wsss.io import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(text + "\n")
    if args.json:
        from wsss.io import write_json

        write_json(args.json, {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
