"""Reads the records of an offline W&B run file (``run-<id>.wandb``), so tests check what
W&B itself stored. The file is W&B's LevelDB-style log: a 7-byte header (``:W&B``, magic
0xBEE1, version 0), then 32 KiB blocks of chunks, each ``<crc32, length, type>`` (type 1
a whole record, 2/3/4 its first/middle/last part) holding one ``wandb.proto`` Record."""

import glob
import json
import os
import struct

BLOCK = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")


def records(path: str) -> list:
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0), path
    out, pending, pos = [], b"", 7
    while pos + CHUNK_HEADER.size <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER.size:  # a block's tail too short for a header
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        if length == 0 and kind == 0:
            break
        chunk = data[pos + CHUNK_HEADER.size : pos + CHUNK_HEADER.size + length]
        pos += CHUNK_HEADER.size + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def run_contents(run_dir: str) -> dict:
    """``{"run": Record.run, "history": [row, ...], "summary": {key: value}}``."""
    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    contents = {"run": None, "history": [], "summary": {}}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            contents["run"] = record.run
        elif kind == "history":
            row = {_key(i): json.loads(i.value_json) for i in record.history.item}
            contents["history"].append({k: v for k, v in row.items() if not k.startswith("_")})
        elif kind == "summary":
            for item in record.summary.update:
                if _key(item) and not _key(item).startswith("_"):
                    contents["summary"][_key(item)] = json.loads(item.value_json)
    return contents
