"""Weight-only quantization of decoder LLMs, ours against onnxruntime's, side by side.

    .venv/bin/python bench/llm.py --out .bench/llm [--models gpt2 llama gpt2-large]

For each decoder (exported with a key/value cache by ``bench/export_decoders.py`` with the
export environment's Python, ``--export-python``): GPT-2 small (124M parameters), a
Llama-style decoder (12 layers of width 768, 12 query heads sharing 4 key/value heads,
RMSNorm, rotary embedding) and GPT-2-large (774M, 3.1 GB with external data), all with
**random weights** made to look trained (no pretrained decoder installs offline here), the
variants

* fp32: the export;
* ours int4 (data-free): ``onnxslim quantize --weights int4`` (clipping searched per block);
* ours int4 (calibrated): the same with ``--calib`` (GPTQ);
* ours int4 zp: both again with ``--zero-points`` (asymmetric blocks);
* ours int8 weight-only: ``--weights int8 --blockwise`` (MatMulNBits with 8 bits);
* ORT RTN / HQQ / GPTQ: onnxruntime's ``MatMulNBitsQuantizer`` (4 bits, symmetric), each
  where it runs;
* ORT dynamic: ``quantize_dynamic`` (int8 weights, dynamic activations);

all with block size 32, are measured on held-out token sequences (random ids: random
weights have no language to test): logits cosine with fp32 (mean over sequences), top-1
token agreement, file size, prefill latency (batch 1, ``--tokens`` tokens and an empty
cache, median), per-token decode latency (one token after those, with the variant's own
cache), the quantizer's wall time and peak RSS (GNU time). onnxruntime runs with
``--threads`` threads. Each run replaces the rows it measured in ``llm.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXPORT_PYTHON = REPO / ".venv-export" / "bin" / "python"
MODELS = ("gpt2", "llama", "gpt2-large")
BLOCK = 32

# onnxruntime's quantizers, run with the export environment's Python (they need onnx_ir).
_ORT_SCRIPT = """
import sys, numpy as np, onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization import matmul_nbits_quantizer as nbits
from onnxruntime.quantization.calibrate import CalibrationDataReader
method, source, target, calib, block = sys.argv[1:6]
block = int(block)
if method == "dynamic":
    quantize_dynamic(source, target, weight_type=QuantType.QInt8)
    sys.exit(0)
class Reader(CalibrationDataReader):
    def __init__(self):
        data = np.load(calib)
        count = len(data["input_ids"])
        self.rows = iter([{k: data[k][i : i + 1] for k in data.files} for i in range(count)])
    def get_next(self):
        return next(self.rows, None)
config = {
    "rtn": lambda: nbits.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True),
    "hqq": lambda: nbits.HQQWeightOnlyQuantConfig(block_size=block, bits=4),
    "gptq": lambda: nbits.GPTQWeightOnlyQuantConfig(
        calibration_data_reader=Reader(), block_size=block
    ),
}[method]()
quantizer = nbits.MatMulNBitsQuantizer(
    onnx.load(source), block_size=block, is_symmetric=True, algo_config=config
)
quantizer.process()
large = sum(t.ByteSize() for t in quantizer.model.model.graph.initializer) > 2**31 - 2**20
quantizer.model.save_model_to_file(target, use_external_data_format=large)
"""


def _variants(source: Path, out: Path, calib: Path, export_python: Path) -> dict[str, list[str]]:
    ours = [sys.executable, "-m", "onnxslim", "quantize", str(source), "--quiet"]
    floor = ["--min-cosine", "0", "--min-top1", "0", "--block-size", str(BLOCK)]
    theirs = [str(export_python), "-c", _ORT_SCRIPT]
    name = source.stem
    return {
        "ours int4 data-free": [*ours, "-o", str(out / f"{name}.int4.onnx"), "--weights", "int4"]
        + floor,
        "ours int4 calibrated": [
            *ours,
            "-o",
            str(out / f"{name}.int4-calib.onnx"),
            "--weights",
            "int4",
            "--calib",
            str(calib),
        ]
        + floor,
        "ours int4 zp data-free": [
            *ours,
            "-o",
            str(out / f"{name}.int4-zp.onnx"),
            "--weights",
            "int4",
            "--zero-points",
        ]
        + floor,
        "ours int4 zp calibrated": [
            *ours,
            "-o",
            str(out / f"{name}.int4-zp-calib.onnx"),
            "--weights",
            "int4",
            "--zero-points",
            "--calib",
            str(calib),
        ]
        + floor,
        "ours int8 weight-only": [
            *ours,
            "-o",
            str(out / f"{name}.int8-wo.onnx"),
            "--weights",
            "int8",
            "--blockwise",
        ]
        + floor,
        **{
            f"ORT {method.upper() if method != 'dynamic' else 'dynamic'}": [
                *theirs,
                method,
                str(source),
                str(out / f"{name}.ort-{method}.onnx"),
                str(calib),
                str(BLOCK),
            ]
            for method in ("rtn", "hqq", "gptq", "dynamic")
        },
    }


def _output_of(command: list[str]) -> Path:
    if "-o" in command:
        return Path(command[command.index("-o") + 1])
    return Path(command[-3])


def _timed(command: list[str], limit: float) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MB) of ``command`` under GNU time, and its error text."""
    with tempfile.NamedTemporaryFile(suffix=".time") as record:
        try:
            done = subprocess.run(
                ["/usr/bin/time", "-f", "%e %M", "-o", record.name, *command],
                capture_output=True,
                text=True,
                timeout=limit,
            )
        except subprocess.TimeoutExpired:
            return float("nan"), float("nan"), f"over {limit:.0f} s"
        parts = Path(record.name).read_text().split()
    if done.returncode != 0:
        return float("nan"), float("nan"), (done.stderr.strip().splitlines() or ["failed"])[-1]
    return float(parts[-2]), float(parts[-1]) / 1024, ""


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _logits(session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    return [session.run(["logits"], feed)[0] for feed in feeds]


def _median_ms(session: ort.InferenceSession, feed: dict[str, np.ndarray], runs: int) -> float:
    for _ in range(2):
        session.run(["logits"], feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(["logits"], feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _next_token(session: ort.InferenceSession, prompt: dict[str, np.ndarray]) -> dict:
    """The feed that decodes one token after ``prompt``, with the cache ``session`` wrote."""
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, prompt), strict=True))
    length = prompt["input_ids"].shape[1]
    feed = {
        "input_ids": outputs["logits"][:, -1:].argmax(-1).astype(np.int64),
        "attention_mask": np.ones((1, length + 1), np.int64),
        "position_ids": np.array([[length]], np.int64),
    }
    for name, value in outputs.items():
        if name.startswith("present."):
            feed[name.replace("present.", "past_key_values.", 1)] = value
    return feed


def _size(path: Path) -> float:
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*")) / 2**20


def _feeds(
    session: ort.InferenceSession, vocab: int, count: int, tokens: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """Prompts of ``tokens`` random ids with an empty cache, one sequence each."""
    rng = np.random.default_rng(seed)
    empty = {
        i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        for i in session.get_inputs()
        if i.name.startswith("past_key_values.")
    }
    return [
        {
            "input_ids": rng.integers(0, vocab, (1, tokens), dtype=np.int64),
            "attention_mask": np.ones((1, tokens), np.int64),
            "position_ids": np.arange(tokens, dtype=np.int64)[None],
            **empty,
        }
        for _ in range(count)
    ]


def _export(name: str, out: Path, export_python: Path) -> Path:
    """The export, its Gemms (GPT-2's Conv1D) rewritten as MatMul + Add: onnxruntime's
    MatMulNBitsQuantizer quantizes MatMul only, and both quantizers must see the same layers.
    Over 2 GiB, the weights go to one external data file next to the model."""
    raw = out / "raw"
    path = raw / f"{name}.onnx"
    if not path.exists():
        subprocess.run(
            [str(export_python), str(HERE / "export_decoders.py"), name, "--out", str(raw)],
            check=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    source = out / f"{name}.matmul.onnx"
    if not source.exists():
        model = onnx.load(str(path))
        _gemm_to_matmul(model.graph)
        large = sum(t.ByteSize() for t in model.graph.initializer) > 2**31 - 2**20
        onnx.save(
            model,
            str(source),
            save_as_external_data=large,
            location=f"{source.name}.data",
            all_tensors_to_one_file=True,
        )
    return source


def _gemm_to_matmul(graph: onnx.GraphProto) -> None:
    """Plain Gemms (alpha = beta = 1, no transA) with a constant weight as MatMul + Add."""
    weights = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        if node.op_type != "Gemm" or not plain or attrs.get("transA", 0):
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0) and weight in weights:
            values = onnx.numpy_helper.to_array(weights[weight]).T.copy()
            weights[weight].CopyFrom(onnx.numpy_helper.from_array(values, weight))
        elif attrs.get("transB", 0):
            nodes.append(node)
            continue
        product = node.output[0] + "_matmul" if len(node.input) > 2 else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", node.input[:2], [product], node.name))
        if len(node.input) > 2:
            nodes.append(onnx.helper.make_node("Add", [product, node.input[2]], node.output))
    del graph.node[:]
    graph.node.extend(nodes)


def measure(name: str, args: argparse.Namespace) -> list[dict]:
    out = args.out
    source = _export(name, out, args.export_python)
    vocab = json.loads((out / "raw" / f"{name}.json").read_text())["inputs"][0]["high"]
    calib = out / f"{source.stem}.calib.npz"
    fp32 = _session(source, args.threads)
    rows = _feeds(fp32, vocab, args.calib, args.calib_tokens, seed=1)
    np.savez(calib, **{k: np.concatenate([r[k] for r in rows]) for k in rows[0]})
    held_out = _feeds(fp32, vocab, args.heldout, args.tokens, seed=2)
    reference = _logits(fp32, held_out)
    del fp32
    results = []

    def record(variant: str, path: Path, seconds: float, rss: float, error: str) -> None:
        row = {"model": name, "variant": variant, "seconds": seconds, "rss_mb": rss}
        if error or not path.exists():
            row["error"] = error or "no output"
            results.append(row)
            print(f"{name} {variant}: {row['error']}", file=sys.stderr)
            return
        session = _session(path, args.threads)
        logits = _logits(session, held_out)
        cosines = [
            float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))
            for a, b in zip(reference, logits, strict=True)
        ]
        agree = np.mean(
            [np.mean(a.argmax(-1) == b.argmax(-1)) for a, b in zip(reference, logits, strict=True)]
        )
        row |= {
            "cosine": float(np.mean(cosines)),
            "top1": float(agree),
            "size_mb": _size(path),
            "prefill_ms": _median_ms(session, held_out[0], args.runs),
            "decode_ms": _median_ms(session, _next_token(session, held_out[0]), args.runs * 5),
        }
        results.append(row)
        print(json.dumps(row), file=sys.stderr)

    record("fp32", source, float("nan"), float("nan"), "")
    for variant, command in _variants(source, out, calib, args.export_python).items():
        if args.only and variant not in args.only:
            continue
        seconds, rss, error = _timed(command, args.timeout)
        record(variant, _output_of(command), seconds, rss, error)
    return results


def _table(results: list[dict]) -> str:
    lines = [
        "| model | variant | cosine | top-1 | MB | prefill ms | decode ms | quantize s "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | failed: {r['error'][:60]} ||||||")
            continue
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['cosine']:.4f} | {r['top1']:.3f} | "
            f"{r['size_mb']:.0f} | {r['prefill_ms']:.0f} | {r['decode_ms']:.1f} | "
            f"{r['seconds']:.1f} | "
            f"{r['rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / ".bench" / "llm")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--export-python", type=Path, default=EXPORT_PYTHON)
    parser.add_argument("--only", nargs="*", help="variants to run (default: all)")
    parser.add_argument("--calib", type=int, default=32, help="calibration sequences")
    parser.add_argument("--calib-tokens", type=int, default=64)
    parser.add_argument("--heldout", type=int, default=8, help="held-out sequences")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per held-out sequence")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="timed prefill runs")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per quantizer")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    record = args.out / "llm.json"
    kept = json.loads(record.read_text()) if record.exists() else []
    results = [row for name in args.models for row in measure(name, args)]
    ran = {(row["model"], row["variant"]) for row in results}
    kept = [row for row in kept if (row["model"], row["variant"]) not in ran]
    record.write_text(json.dumps(kept + results, indent=2) + "\n")
    print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
