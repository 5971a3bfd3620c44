"""What every compression benchmark measures: accuracy on digits, output cosine, CPU latency.

The quantization, pruning, distillation and storage benchmarks compare models the same way,
so the measuring lives here once:

- :func:`digits` — the fixed train/test split of scikit-learn's digits stored in
  ``fixtures/digits.npz`` (written by ``fixtures/train_digits_cnn.py``), and
  :data:`DIGITS_CNN`, the model trained on it;
- :func:`digits_accuracy` — top-1 test accuracy of an ONNX classifier under onnxruntime;
- :func:`output_cosine` — the smallest cosine similarity between two models' outputs;
- :func:`latency_ms` — median CPU latency of one session over many runs, and
  :func:`interleaved_latency` — the same for several models measured in alternating rounds;
- :func:`bench_model` — an exported ResNet-50 / MobileNetV2 / BERT-base graph (random weights),
  exported on first use by ``bench/export_models.py`` in ``.venv-export`` and cached.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxslim.validate import cosine_similarity

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
DIGITS_CNN = FIXTURES / "digits_cnn.onnx"
EXPORT_FOLDER = REPO / ".bench" / "peers" / "torchscript-opset17"
EXPORT_PYTHON = REPO / ".venv-export" / "bin" / "python"

__all__ = [
    "DIGITS_CNN",
    "digits",
    "session",
    "run",
    "digits_accuracy",
    "output_cosine",
    "latency_ms",
    "interleaved_latency",
    "bench_model",
    "bench_feed",
]


def digits() -> dict[str, np.ndarray]:
    """x_train, y_train, x_test, y_test: float32 NCHW images in [0, 1] and int64 labels."""
    with np.load(FIXTURES / "digits.npz") as data:
        return {name: data[name] for name in data.files}


def session(path: Path, *, threads: int | None = None, optimize: bool = True):
    """An onnxruntime CPU session, as a deployment would open it (all rewrites on)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(path: Path, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """All outputs of one run of ``path`` on ``feed`` (inputs it does not take are dropped)."""
    sess = session(path)
    wanted = {i.name for i in sess.get_inputs()}
    return sess.run(None, {name: value for name, value in feed.items() if name in wanted})


def digits_accuracy(path: Path, data: Mapping[str, np.ndarray] | None = None) -> float:
    """Top-1 accuracy of classifier ``path`` (one image input, logits first) on the test split."""
    data = data or digits()
    sess = session(path)
    name = sess.get_inputs()[0].name
    logits = sess.run(None, {name: data["x_test"]})[0]
    return float((logits.argmax(axis=1) == data["y_test"]).mean())


def output_cosine(reference: Path, candidate: Path, feed: Mapping[str, np.ndarray]) -> float:
    """The smallest cosine similarity between corresponding float outputs of two models."""
    worst = 1.0
    for ref, cand in zip(run(reference, feed), run(candidate, feed), strict=True):
        if not np.issubdtype(ref.dtype, np.floating):
            continue
        worst = min(worst, cosine_similarity(ref, cand))
    return worst


def latency_ms(
    path: Path,
    feed: Mapping[str, np.ndarray],
    *,
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    min_seconds: float = 0.0,
    cpu_time: bool = False,
) -> float:
    """Median wall time of ``session.run`` in milliseconds, after ``warmup`` runs.

    Runs at least ``runs`` times and, with ``min_seconds``, keeps going until that much time
    has passed, so that fast models get enough samples for a stable median. ``cpu_time``
    measures the process's CPU time instead: with one thread, what a run costs on an idle
    core, which other work on a shared machine disturbs far less than the wall clock.
    """
    clock = time.process_time if cpu_time else time.perf_counter
    sess = session(path, threads=threads)
    wanted = {i.name for i in sess.get_inputs()}
    feed = {name: value for name, value in feed.items() if name in wanted}
    for _ in range(warmup):
        sess.run(None, feed)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < runs or time.perf_counter() - started < min_seconds:
        start = clock()
        sess.run(None, feed)
        times.append(clock() - start)
    return statistics.median(times) * 1000


def interleaved_latency(
    paths: Sequence[Path],
    feeds: Mapping[str, Mapping[str, np.ndarray]],
    *,
    runs: int = 30,
    rounds: int = 3,
    threads: int | None = None,
    min_seconds: float = 0.0,
    cpu_time: bool = False,
) -> list[dict[str, float]]:
    """Median latency per feed of each model, measured in alternating rounds.

    On a shared machine a burst of load then hits every model alike instead of whichever was
    being measured at the time; each value is the median of the per-round medians.
    """
    samples: list[dict[str, list[float]]] = [{label: [] for label in feeds} for _ in paths]
    for _ in range(rounds):
        for path, sample in zip(paths, samples, strict=True):
            for label, feed in feeds.items():
                sample[label].append(
                    latency_ms(
                        path,
                        feed,
                        runs=max(1, runs // rounds),
                        warmup=2,
                        threads=threads,
                        min_seconds=min_seconds / rounds,
                        cpu_time=cpu_time,
                    )
                )
    return [{label: statistics.median(v) for label, v in s.items()} for s in samples]


def bench_model(name: str, log: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]]:
    """The exported model ``name`` (resnet50, mobilenetv2, bert-base, ...) and its manifest.

    Exports it with torch (TorchScript exporter, opset 17) on first use; ``make`` does not build
    ``.venv-export``, ``bench/setup_peers.sh`` does.
    """
    sys.path.insert(0, str(Path(__file__).parent))
    from vs_peers import ensure_exported

    exported = ensure_exported(
        name, EXPORT_FOLDER, exporter="torchscript", opset=17, python=EXPORT_PYTHON, log=log
    )
    return exported.path, exported.manifest


def bench_feed(manifest: Mapping[str, Any], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for an exported model, with the batch dimension set to ``batch``."""
    sys.path.insert(0, str(Path(__file__).parent))
    from vs_peers import make_feed

    inputs = [{**spec, "shape": [batch, *spec["shape"][1:]]} for spec in manifest["inputs"]]
    return make_feed(inputs, seed)
