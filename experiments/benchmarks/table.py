"""Markdown tables from the JSON files of benchmark.py and input_pipeline.py.

    python experiments/benchmarks/table.py OUT_DIR/*.json

Step rows (benchmark.py) and input-pipeline rows (input_pipeline.py) get one table each,
in the order of the files given. Columns are explained in experiments/README.md.
"""

from __future__ import annotations

import json
import os
import sys

STEP_HEADER = (
    "| row | JAX images/s | step ms | compile s | GFLOP/step | GFLOP/s | util % "
    "| peak MiB | PyTorch images/s | JAX / PyTorch | device idle % |"
)
INPUT_HEADER = "| row | image px | source px | batch | cores | images/s | images/s/core |"


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def step_row(name: str, r: dict) -> str:
    idle = r.get("device_idle_fraction")
    cells = [
        name,
        _f(r["images_per_s"]),
        _f(r["step_time_s"] * 1e3, 0),
        _f(r["compile_s"]),
        _f(r["flops_per_step"] / 1e9, 1),
        _f(r["achieved_flops_per_s"] / 1e9, 1),
        _f(100 * r["utilisation"], 1),
        _f(r["peak_memory_bytes"] / 2**20, 0),
        _f(r.get("torch_images_per_s")),
        _f(r.get("jax_over_torch"), 2),
        _f(None if idle is None else 100 * idle, 0),
    ]
    return "| " + " | ".join(cells) + " |"


def input_row(name: str, r: dict) -> str:
    cells = [
        name,
        str(r["image_size"]),
        str(r["source_size"]),
        str(r["global_batch_size"]),
        str(r["cores"]),
        _f(r["images_per_s"]),
        _f(r["images_per_s_per_core"]),
    ]
    return "| " + " | ".join(cells) + " |"


def tables(paths: list[str]) -> str:
    steps, inputs = [], []
    for path in paths:
        with open(path) as f:
            r = json.load(f)
        name = os.path.splitext(os.path.basename(path))[0]
        (steps if "step_time_s" in r else inputs).append((name, r))
    out = []
    if steps:
        out += [STEP_HEADER, "|" + " --- |" * (STEP_HEADER.count("|") - 1)]
        out += [step_row(n, r) for n, r in steps]
    if inputs:
        out += ["", INPUT_HEADER, "|" + " --- |" * (INPUT_HEADER.count("|") - 1)]
        out += [input_row(n, r) for n, r in inputs]
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: table.py FILE.json ...")
    print(tables(sys.argv[1:]))
