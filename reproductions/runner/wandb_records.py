"""Read a W&B run directory back without W&B's servers: the records of an offline run.

An offline run (``runs/wandb/offline-run-<time>-<id>/``) keeps everything it logged in one file,
``run-<id>.wandb``: a LevelDB log (github.com/google/leveldb/blob/main/doc/log_format.md) of
protobuf ``Record`` messages (``wandb.proto.wandb_internal_pb2``), behind a 7-byte header
(ident ``:W&B``, magic 0xBEE1, version 0). wandb 0.31 ships no Python reader for it (its service
is written in Go), so this module is the reader: ``repro compare`` and the tests use it.
"""

from __future__ import annotations

import json
import time
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

HEADER = struct.Struct("<4sHB")  # ident, magic, version
HEADER_IDENT, HEADER_MAGIC = b":W&B", 0xBEE1
BLOCK = 32768
RECORD_HEADER = struct.Struct("<IHB")  # crc32 of type + data, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def record_payloads(path: Path) -> Iterator[bytes]:
    """The payloads of a LevelDB log, FIRST/MIDDLE/LAST fragments joined; a torn tail ends it."""
    data = Path(path).read_bytes()
    if len(data) < HEADER.size:
        return
    ident, magic, _ = HEADER.unpack_from(data)
    if ident != HEADER_IDENT or magic != HEADER_MAGIC:
        raise ValueError(f"{path}: not a W&B run file (header {data[:HEADER.size]!r})")
    offset, pending = HEADER.size, b""
    while offset + RECORD_HEADER.size <= len(data):
        room = BLOCK - offset % BLOCK
        if room < RECORD_HEADER.size:  # block trailer: zero padding
            offset += room
            continue
        checksum, length, kind = RECORD_HEADER.unpack_from(data, offset)
        start = offset + RECORD_HEADER.size
        payload = data[start:start + length]
        if kind == 0 and length == 0:  # zero fill at the end of a block
            offset += room
            continue
        if len(payload) < length or zlib.crc32(bytes([kind]) + payload) != checksum:
            return  # a record the writer did not finish (killed run): stop at the last good one
        offset = start + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield pending + payload
            pending = b""


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    for payload in record_payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class WandbRun:
    """What one run logged: its identity, config, history rows, summary and metric definitions."""

    directory: Path
    id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    metric_summaries: dict[str, set[str]] = field(default_factory=dict)
    step_metrics: dict[str, str] = field(default_factory=dict)
    exit_code: int | None = None  # set once the run has finished (its exit record)

    @property
    def label(self) -> str:
        return self.name or self.id or self.directory.name


def _update_config(config: dict[str, Any], items: Any) -> None:
    for item in items:
        value = json.loads(item.value_json)
        if isinstance(value, dict) and set(value) == {"value"} or (
                isinstance(value, dict) and "value" in value and "desc" in value):
            value = value["value"]
        config[_key(item)] = value


def run_file(directory: Path) -> Path:
    found = sorted(Path(directory).glob("run-*.wandb"))
    if not found:
        raise FileNotFoundError(f"{directory}: no run-*.wandb file; is it a W&B run directory "
                                "(runs/wandb/offline-run-... or runs/wandb/run-...)?")
    return found[0]


def read_finished_run(directory: Path | str, timeout: float = 60.0) -> WandbRun:
    """The run once its exit record is written: W&B's service process writes the records after
    the process that logged them, even after that process has exited. After ``timeout`` seconds
    the run as it stands (a killed run never writes its exit record)."""
    deadline = time.monotonic() + timeout
    run = read_run(directory)
    while run.exit_code is None and time.monotonic() < deadline:
        time.sleep(0.1)
        run = read_run(directory)
    return run


def read_run(directory: Path | str) -> WandbRun:
    """Replay a W&B run directory's records into a :class:`WandbRun`."""
    directory = Path(directory)
    run = WandbRun(directory)
    for record in records(run_file(directory)):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.id, run.name = r.run_id, r.display_name
            run.group, run.job_type, run.tags = r.run_group, r.job_type, list(r.tags)
            _update_config(run.config, r.config.update)
        elif kind == "config":
            _update_config(run.config, record.config.update)
        elif kind == "history":
            row = {_key(item): json.loads(item.value_json) for item in record.history.item}
            run.history.append(row)
            run.summary.update(row)
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "metric":
            metric = record.metric
            name = metric.name or metric.glob_name
            summary = metric.summary
            kinds = {k for k in ("min", "max", "mean", "last", "best", "first")
                     if getattr(summary, k, False)}
            if kinds:
                run.metric_summaries.setdefault(name, set()).update(kinds)
            if metric.step_metric:
                run.step_metrics[name] = metric.step_metric
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
        elif kind == "telemetry" or kind is None:
            continue
    return run
