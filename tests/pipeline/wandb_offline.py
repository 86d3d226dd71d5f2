"""Read back what an offline W&B run wrote (``wandb/offline-run-*/run-*.wandb``), for tests.

The ``.wandb`` file is a LevelDB-style log (32 KiB blocks, 7-byte record headers) of
``wandb_internal_pb2.Record`` messages after a 7-byte ``:W&B`` header.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32768


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            continue
        buf += data[pos:pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST fragment
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """{config, summary, group, job_type, tags, name, files, history_keys} of one offline run."""
    log_file = next(Path(run_dir).glob("run-*.wandb"))
    out: dict[str, Any] = {"config": {}, "summary": {}, "files": [], "history_keys": set()}
    for record in records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.update(group=run.run_group, job_type=run.job_type, tags=list(run.tags),
                       name=run.display_name)
            for item in run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
        elif kind == "history":
            out["history_keys"].update(item.key or item.nested_key[0] for item in record.history.item)
        elif kind == "files":
            out["files"].extend(f.path for f in record.files.files)
    return out
