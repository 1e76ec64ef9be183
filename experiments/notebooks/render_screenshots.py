"""Renders docs/notebooks/<name>.png: each notebook's main figure from a real run.

    python experiments/notebooks/render_screenshots.py [NAME ...] [--smoke] [--max-width W]

Runs each notebook (all of experiments/notebooks/ by default) top to bottom with nbclient
in a python3 kernel started at the repository root, with ``SMOKE = False`` injected after
its ``parameters`` cell (the papermill convention; ``--smoke`` keeps ``SMOKE = True``, to
try the script quickly). The screenshot is the PNG output of the cell tagged
``screenshot`` (several PNGs of that cell are placed side by side), or the notebook's last
PNG output if no cell has the tag; it is written to docs/notebooks/<name>.png with
Pillow's optimiser, and what the notebook printed goes to stdout. The executed notebook
itself is not saved: committed notebooks keep no outputs (tests/test_notebooks.py checks
it). Not run in CI: the real presets take minutes each on a CPU.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import time

import nbclient
import nbformat
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT_DIR = os.path.join(ROOT, "docs", "notebooks")


def pngs(cell: nbformat.NotebookNode) -> list[bytes]:
    """The PNG images a cell displayed."""
    return [
        base64.b64decode(out.data["image/png"])
        for out in cell.get("outputs", [])
        if out.output_type in ("display_data", "execute_result") and "image/png" in out.data
    ]


def execute(name: str, smoke: bool, timeout: int | None = None) -> nbformat.NotebookNode:
    """The notebook ``name`` (without .ipynb) executed with ``SMOKE = smoke``; any cell's
    error raises ``CellExecutionError`` naming the cell (``timeout``: seconds per cell)."""
    nb = nbformat.read(os.path.join(HERE, f"{name}.ipynb"), as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{name}.ipynb has {len(tagged)} cells tagged 'parameters', not 1.")
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(f"SMOKE = {smoke}"))
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": ROOT}}
    )
    client.execute()
    return nb


def screenshot(nb: nbformat.NotebookNode, name: str) -> Image.Image:
    """The tagged cell's PNG outputs side by side (or the last PNG of the notebook)."""
    tagged = [c for c in nb.cells if "screenshot" in c.metadata.get("tags", [])]
    found = [png for cell in tagged for png in pngs(cell)]
    if not found:
        every = [png for cell in nb.cells if cell.cell_type == "code" for png in pngs(cell)]
        if not every:
            raise ValueError(f"{name}.ipynb displayed no PNG image.")
        found = every[-1:]
    images = [Image.open(io.BytesIO(png)).convert("RGB") for png in found]
    height = max(im.height for im in images)
    canvas = Image.new("RGB", (sum(im.width for im in images), height), "white")
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width
    return canvas


def printed_text(nb: nbformat.NotebookNode) -> str:
    """What the run printed (stream outputs), to read its numbers beside the screenshot."""
    return "".join(
        out.text
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.output_type == "stream" and out.name == "stdout"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks without .ipynb (default: all)")
    parser.add_argument("--smoke", action="store_true", help="SMOKE = True (a quick try)")
    parser.add_argument(
        "--max-width", type=int, default=900, help="shrink wider screenshots to this width"
    )
    args = parser.parse_args(argv)
    names = args.names or sorted(n[:-6] for n in os.listdir(HERE) if n.endswith(".ipynb"))
    os.makedirs(OUT_DIR, exist_ok=True)
    for name in names:
        start = time.time()
        nb = execute(name, smoke=args.smoke)
        print(printed_text(nb), flush=True)
        image = screenshot(nb, name)
        if image.width > args.max_width:
            size = (args.max_width, round(image.height * args.max_width / image.width))
            image = image.resize(size, Image.LANCZOS)
        path = os.path.join(OUT_DIR, f"{name}.png")
        image.save(path, optimize=True)
        print(
            f"{name}: {time.time() - start:.0f} s -> {path} "
            f"({image.width}x{image.height}, {os.path.getsize(path) / 1024:.0f} KB)",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
