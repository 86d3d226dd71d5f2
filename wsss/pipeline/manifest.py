"""Stage manifests: what produced a finished stage, so that it is reused only when it still fits.

Every finished stage writes ``manifest.json`` last (atomically); its presence marks the stage
finished. It records the resolved stage config and the global settings that shape every output
(method, backbone, data identity, protocol, seed, precision) with their hash, the manifests (hashes)
of the stages it read, the list of its artifacts (relative path, bytes, sha256), package versions
and the git commit. A stage is reused (``pipeline.skip_done``, ``pipeline.from_run``) only when the
config hash and the input manifests match; :func:`reuse_diff` says which keys differ.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from wsss.io import read_json, write_json

MANIFEST_FILE = "manifest.json"
# Written when a stage starts: the config hash and input manifests its partial artifacts belong
# to. A rerun in the same directory keeps them (per-image resume) only if they still match.
STARTED_FILE = "started.json"
FORMAT = 1

# Stage keys that do not change what a stage writes (parallelism, where inputs come from: the
# inputs are compared by their manifests instead).
IGNORED_STAGE_KEYS = frozenset({"num_workers", "num_threads", "all_ranks", "reads", "resume",
                                "checkpoint_every_n_steps"})
# Stage keys added after manifests existed, with the value that reproduces the behaviour from before
# they existed: at that value they are left out of the config hash, so earlier runs stay reusable.
ADDED_STAGE_KEYS: dict[str, Any] = {"resize": "tensor", "upsample": "image", "normalize": "max",
                                    "recompute_release": False, "select_round": "last",
                                    "bg_alphas": [0.25, 0.4, 0.55, 0.8, 1, 2, 4, 8, 16, 32]}
# Files under a stage directory that are bookkeeping, not artifacts.
NOT_ARTIFACTS = frozenset({MANIFEST_FILE, STARTED_FILE})
NOT_ARTIFACT_DIRS = frozenset({"checkpoints", "csv", "wandb"})


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def stage_config(cfg: DictConfig, name: str) -> dict[str, Any]:
    """The resolved config of stage ``name`` minus keys that do not shape its outputs."""
    node = _container(cfg.stages[name])
    return {k: v for k, v in node.items()
            if k not in IGNORED_STAGE_KEYS and not (k in ADDED_STAGE_KEYS and v == ADDED_STAGE_KEYS[k])}


def global_config(cfg: DictConfig, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """Settings outside ``stages`` that shape outputs: method, backbone, data identity, protocol,
    seed and numeric precision (not: loggers, paths, workers, devices).

    ``keys``: only these (dotted, e.g. ``protocol.holdout_fraction``); a stage module narrows
    them with ``GLOBAL_KEYS`` (a fit stage does not depend on the evaluation protocol)."""
    data = _container(cfg.data)
    module = dict(data.get("module") or {})
    for key in ("num_workers", "persistent_workers", "pin_memory"):
        module.pop(key, None)
    data["module"] = module
    data.pop("check", None)  # how the pre-flight data check runs (workers, cache) shapes no output
    if data.get("root") is not None:
        data.pop("synthetic", None)  # only used when there is no root
    elif isinstance(data.get("synthetic"), dict):  # knobs at their defaults: the tree runs made
        from wsss.data.synthetic import KNOBS  # before the knobs existed used (stay reusable)

        data["synthetic"] = {k: v for k, v in data["synthetic"].items()
                             if not (k in KNOBS and v is not None and float(v) == KNOBS[k])}  # fmt: skip
    trainer = cfg.get("trainer") or {}
    full = {"method": _container(cfg.get("method")), "backbone": _container(cfg.get("backbone")),
            "data": data, "protocol": _container(cfg.get("protocol")), "seed": cfg.get("seed"),
            "precision": str(trainer.get("precision", "32-true"))}  # fmt: skip
    if keys is None:
        return full
    out: dict[str, Any] = {}
    for key in keys:
        head, _, rest = key.partition(".")
        value = full.get(head)
        for part in rest.split(".") if rest else ():
            value = value.get(part) if isinstance(value, Mapping) else None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


# The global keys of a stage that does not say otherwise (GLOBAL_KEYS in its module): all.
ALL_GLOBAL_KEYS = None
# Fit and CAM stages: the data and the network, not the evaluation protocol.
MODEL_KEYS = ("method", "backbone", "data", "seed", "precision")
# Stages covering the held-out threshold subset too (which images it holds).
HOLDOUT_KEYS = ("protocol.holdout_split", "protocol.holdout_fraction", "protocol.seed")


def stage_global_keys(cfg: DictConfig, name: str) -> tuple[str, ...] | None:
    """``GLOBAL_KEYS`` of stage ``name``'s module (None = every global key)."""
    import importlib

    target = str(cfg.stages[name].get("_target_", ""))
    try:
        module = importlib.import_module(target.rsplit(".", 1)[0])
    except ImportError:
        return None
    keys = getattr(module, "GLOBAL_KEYS", None)
    return tuple(keys) if keys is not None else None


def digest(value: Any) -> str:
    """sha256 of the canonical JSON of ``value`` (sorted keys)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(cfg: DictConfig, name: str) -> dict[str, Any]:
    """``{"config": {"stage": ..., "global": ...}, "config_hash": ...}`` of stage ``name``."""
    config = {"stage": stage_config(cfg, name), "global": global_config(cfg, stage_global_keys(cfg, name))}
    return {"config": config, "config_hash": digest(config)}


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def list_artifacts(stage_dir: Path, content_hash: bool = True) -> list[dict[str, Any]]:
    """Every artifact file under ``stage_dir`` (sorted relative paths) with its size and sha256.

    Skipped: the manifest itself, ``started.json``, hidden temp files of interrupted atomic
    writes, and training bookkeeping (``checkpoints/``, logger folders)."""
    out = []
    for path in sorted(stage_dir.rglob("*")):
        rel = path.relative_to(stage_dir)
        if not path.is_file() or rel.parts[0] in NOT_ARTIFACT_DIRS or str(rel) in NOT_ARTIFACTS:
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue
        item: dict[str, Any] = {"path": rel.as_posix(), "bytes": path.stat().st_size}
        if content_hash:
            item["sha256"] = file_sha256(path)
        out.append(item)
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("wsss", "torch", "lightning", "numpy", "hydra-core", "omegaconf", "torchvision"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


def git_commit(root: Path | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the source tree, or None outside a git checkout."""
    root = root or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha, "dirty": bool(status.strip())} if sha else None


def build_manifest(cfg: DictConfig, name: str, stage_dir: Path,
                   inputs: Mapping[str, Mapping[str, Any]], extra: Mapping[str, Any] | None = None,
                   content_hash: bool = True) -> dict[str, Any]:  # fmt: skip
    """The manifest of finished stage ``name`` (see the module docstring).

    ``inputs``: ``{role: {"stage", "dir", "manifest_hash"}}`` of the stages it read."""
    print_ = fingerprint(cfg, name)
    artifacts = list_artifacts(stage_dir, content_hash=content_hash)
    inputs = {role: dict(v) for role, v in sorted(inputs.items())}
    manifest: dict[str, Any] = {
        "format": FORMAT, "stage": name, **print_, "inputs": inputs,
        "artifacts": artifacts, "num_artifacts": len(artifacts),
        "artifact_bytes": sum(a["bytes"] for a in artifacts),
        "versions": _versions(), "git": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
        **(extra or {}),
    }  # fmt: skip
    # What downstream stages compare: the config, the inputs and the artifacts' content.
    manifest["manifest_hash"] = digest({
        "config_hash": manifest["config_hash"],
        "inputs": {role: v.get("manifest_hash") for role, v in inputs.items()},
        "artifacts": [(a["path"], a["bytes"], a.get("sha256")) for a in artifacts],
    })  # fmt: skip
    return manifest


def write_manifest(stage_dir: Path, manifest: Mapping[str, Any]) -> None:
    write_json(stage_dir / MANIFEST_FILE, manifest)


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    """The manifest of a finished stage directory, or None when it has none (unfinished)."""
    path = stage_dir / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable manifest ({err}); delete the stage directory "
                         f"{stage_dir} to rerun that stage") from err


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}`` (lists are leaves)."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` per differing leaf of two configs (``stages.<s>.`` / global keys)."""
    before, after = flatten(old), flatten(new)
    lines = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, "<absent>"), after.get(key, "<absent>")
        if a != b:
            lines.append(f"{key}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}")
    return lines


def reuse_diff(manifest: Mapping[str, Any], cfg: DictConfig, name: str,
               input_hashes: Mapping[str, str | None]) -> list[str]:  # fmt: skip
    """Why the finished stage of ``manifest`` does not fit the current config (empty: it fits).

    ``input_hashes``: ``{stage: manifest_hash}`` of the finished stages the current run would
    give it as inputs (None: not available)."""
    expected = fingerprint(cfg, name)
    if manifest.get("config_hash") == expected["config_hash"]:
        lines = []
    else:
        lines = config_diff(_prefixed(manifest.get("config", {}), name), _prefixed(expected["config"], name))
        lines = lines or ["config hash differs (config format changed)"]
    reads = {str(k): v for k, v in (_container(cfg.stages[name].get("reads")) or {}).items()}
    for role, recorded in (manifest.get("inputs") or {}).items():
        stage = recorded.get("stage")
        if role in reads and reads[role] != stage:
            lines.append(f"stages.{name}.reads.{role}: {json.dumps(stage)} -> {json.dumps(reads[role])}")
            continue
        current = input_hashes.get(stage)
        if current != recorded.get("manifest_hash"):
            lines.append(f"input {role} (stage {stage}): manifest {str(recorded.get('manifest_hash'))[:12]} "
                         f"-> {str(current)[:12] if current else 'not finished'}")
    return lines


def _prefixed(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``{"stage": s, "global": g}`` -> ``{"stages": {name: s}, **g}`` so keys read as overrides."""
    out: dict[str, Any] = dict(config.get("global") or {})
    out["stages"] = {name: config.get("stage") or {}}
    return out


def format_diff(problems: Mapping[str, Iterable[str]], source: str) -> str:
    """A readable report of ``{stage: [diff lines]}``."""
    lines = []
    for stage, diff in problems.items():
        lines.append(f"  stage {stage} ({source}):")
        lines.extend(f"    {line}" for line in diff)
    return "\n".join(lines)
