"""Storage benchmark: float16, magnitude sparsity with sparse storage, 4-bit clustering.

On the digits CNN (test accuracy) and BERT-base (smallest output cosine against float32): the
file size, CPU latency and quality of each variant, and float16 against onnxconverter-common's
converter (what PyPI OnnxSlim's ``--dtype fp16`` uses) in the same run, with its Cast count;
a small synthetic decoder with Resize ops (which both converters keep in float32) shows where
the Casts differ.
onnxconverter-common runs in ``.venv-peers`` (``.venv-peers/bin/pip install
onnxconverter-common``).

    .venv/bin/python bench/storage.py [--quick] [--json results.json]

``--quick`` leaves out BERT-base and measures latency in two short rounds instead of three.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from _evaluate import DIGITS_CNN, bench_feed, bench_model, digits, digits_accuracy, latency_ms
from _evaluate import output_cosine as cosine
from _report import consoles, work_folder
from onnx import TensorProto, helper, numpy_helper
from rich.table import Table

import onnxslim

REPO = Path(__file__).resolve().parent.parent
PEERS_PYTHON = REPO / ".venv-peers" / "bin" / "python"
VARIANTS = {
    "float16": "float16",
    "sparsity 50% (sparse storage)": "prune-weights(sparsity=0.5, scope=global, sparse_storage=1)",
    "sparsity 80% (sparse storage)": "prune-weights(sparsity=0.8, scope=global, sparse_storage=1)",
    "4-bit clusters": "cluster-weights(bits=4)",
}
# With half-precision inputs and outputs (only for models whose inputs are not floats, so
# that the same feed and quality measure apply).
HALF_IO = "float16(keep_io_types=false)"
PEER_FLOAT16 = """
import sys, warnings, onnx
from onnxconverter_common import float16
warnings.simplefilter("ignore")
model = onnx.load(sys.argv[1])
keep = sys.argv[3] == "keep"
onnx.save(float16.convert_float_to_float16(model, keep_io_types=keep), sys.argv[2])
"""


def peer_float16(source: Path, destination: Path, keep_io_types: bool) -> bool:
    """onnxconverter-common's float16 converter in the peers' environment; False if missing."""
    if not PEERS_PYTHON.exists():
        return False
    keep = "keep" if keep_io_types else "half"
    done = subprocess.run(
        [str(PEERS_PYTHON), "-c", PEER_FLOAT16, str(source), str(destination), keep],
        capture_output=True,
        text=True,
    )
    return done.returncode == 0 and destination.exists()


def casts(path: Path) -> int:
    return sum(n.op_type == "Cast" for n in onnx.load(path, load_external_data=False).graph.node)


def upsampler(path: Path) -> Path:
    """A small synthetic decoder, Conv+Relu then two Resizes (linear and nearest) added, three
    times: Resize is on both converters' block lists, so their Cast placement differs."""
    rng = np.random.default_rng(0)
    weights = {"scales": np.array([1, 1, 2, 2], np.float32)}
    nodes, current = [], "image"
    for i in range(3):
        weights[f"w{i}"] = (rng.standard_normal((8, 8 if i else 3, 3, 3)) * 0.2).astype(np.float32)
        nodes += [
            helper.make_node("Conv", [current, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1] * 4),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
            helper.make_node(
                "Resize", [f"r{i}", "", "scales"], [f"u{i}"], name=f"up{i}", mode="linear"
            ),
            helper.make_node("Resize", [f"r{i}", "", "scales"], [f"n{i}"], name=f"near{i}"),
            helper.make_node("Add", [f"u{i}", f"n{i}"], [f"m{i}"], name=f"add{i}"),
        ]
        current = f"m{i}"
    graph = helper.make_graph(
        nodes,
        "upsampler",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, 8, 256, 256])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)
    return path


def measure(
    name: str,
    source: Path,
    feed,
    quality,
    folder: Path,
    log,
    variants: dict[str, str] = VARIANTS,
    half_io: bool = False,
    rounds: int = 3,
    min_seconds: float = 1.0,
) -> list[dict]:
    """One row per variant of ``source``: size, latency, quality, Casts.

    Latency is the best of ``rounds`` medians, the variants taking turns in each round, so
    that load from other processes does not land on one variant only.
    """
    paths = {"float32": source}
    variants = dict(variants, **({"float16, half I/O": HALF_IO} if half_io else {}))
    for variant, spec in variants.items():
        paths[variant] = folder / f"{name}.{len(paths)}.onnx"
        log(f"{name}: {spec}")
        onnxslim.optimize(source, spec, output=paths[variant])
    for keep_io_types in (True, False) if half_io else (True,):
        variant = "float16" + ("" if keep_io_types else ", half I/O")
        peer = folder / f"{name}.{len(paths)}.onnxconverter-common.onnx"
        if peer_float16(source, peer, keep_io_types):
            paths[f"{variant} (onnxconverter-common)"] = peer
        else:
            log(f"onnxconverter-common failed or is missing in .venv-peers: no {variant} row")

    base_casts = casts(source)
    rows = {}
    for variant, path in paths.items():
        row = {
            "model": name,
            "variant": variant,
            "bytes": path.stat().st_size,
            "casts_added": casts(path) - base_casts,
            "latency_ms": None,
            "quality": None,
            "error": None,
        }
        try:
            row["quality"] = quality(path)
        except Exception as exc:  # a converter's output that onnxruntime rejects is a result
            row["error"] = str(exc).strip().splitlines()[0][:160]
            log(f"{name}: {variant} does not run: {row['error']}")
        rows[variant] = row
    for round_number in range(1, rounds + 1):
        log(f"{name}: latency, round {round_number} of {rounds}")
        for variant, path in paths.items():
            if rows[variant]["error"] is None:
                took = latency_ms(path, feed, runs=20, warmup=5, min_seconds=min_seconds)
                best = rows[variant]["latency_ms"]
                rows[variant]["latency_ms"] = took if best is None else min(best, took)
    return list(rows.values())


def _size(count: int) -> str:
    return f"{count / 2**20:.2f} MiB" if count >= 2**20 else f"{count / 2**10:.1f} KiB"


def render(rows: list[dict], console) -> None:
    table = Table(title="Storage: float16, magnitude sparsity, weight clustering (CPU)")
    for column in ("model", "variant", "file", "size", "latency", "quality", "Casts"):
        table.add_column(column, justify="left" if column in ("model", "variant") else "right")
    baseline = {}
    for r in rows:
        base = baseline.setdefault(r["model"], r)
        failed = "[red]onnxruntime cannot load it[/]"
        table.add_row(
            r["model"],
            r["variant"],
            _size(r["bytes"]),
            f"{r['bytes'] / base['bytes']:.2f}x",
            failed
            if r["error"]
            else f"{r['latency_ms']:.2f} ms ({r['latency_ms'] / base['latency_ms']:.2f}x)",
            "" if r["error"] else f"{r['quality']:.4f}",
            str(r["casts_added"]) if "float16" in r["variant"] else "",
        )
    console.print(table)
    console.print(
        "quality: test accuracy (digits), smallest output cosine vs float32 (others); "
        "Casts: Cast nodes the float16 converter added"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="Leave out BERT-base; shorter latency rounds."
    )
    parser.add_argument("--json", type=Path, help="Write the rows as JSON here.")
    parser.add_argument("--work", type=Path, help="Keep the models in this folder.")
    args = parser.parse_args()
    console, _, log = consoles(140)
    folder, made = work_folder(args.work, "onnxslim-storage-")
    rounds, min_seconds = (2, 0.3) if args.quick else (3, 1.0)
    try:
        data = digits()
        feed = {"image": data["x_test"][:64]}
        rows = measure(
            "digits-cnn",
            DIGITS_CNN,
            feed,
            lambda p: digits_accuracy(p, data),
            folder,
            log,
            rounds=rounds,
            min_seconds=min_seconds,
        )
        decoder = upsampler(folder / "upsampler.onnx")
        image = {"image": np.random.default_rng(0).standard_normal((1, 3, 32, 32), np.float32)}
        rows += measure(
            "upsampler",
            decoder,
            image,
            lambda p: cosine(decoder, p, image),
            folder,
            log,
            variants={"float16": "float16"},
            rounds=rounds,
            min_seconds=min_seconds,
        )
        if not args.quick:
            path, manifest = bench_model("bert-base", log=log)
            bert_feed = bench_feed(manifest, batch=1)
            rows += measure(
                "bert-base",
                path,
                bert_feed,
                lambda p: cosine(path, p, bert_feed),
                folder,
                log,
                half_io=True,
                rounds=rounds,
                min_seconds=min_seconds,
            )
    finally:
        if made:
            shutil.rmtree(folder, ignore_errors=True)
    render(rows, console)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    sys.exit(main())
