"""Benchmark: distillation with the native backend, against onnxruntime-training and PyTorch.

Run it in ``.venv`` (``.venv/bin/python bench/distill.py``): the native backend trains
there, on the newest onnxruntime. The onnxruntime-training and PyTorch parts run in
``.venv-train`` (``make .venv-train/.installed``) as workers of this same script; without it
those columns say so. The MiniLM part needs ``bash bench/setup_peers.sh export`` and
``.venv-export/bin/python bench/real_models.py --prepare`` (see bench/real_models.py).

1. **Digits CNN** (``fixtures/digits_cnn.onnx``), pruned at 0.5: top-1 on the 450 test images
   of the teacher, the pruned student, the student distilled with the native backend (default
   options), with onnxruntime-training (same options), fine-tuned by PyTorch on the same loss
   and schedule (the ONNX student translated to torch), and trained on hard labels alone.
2. **A held-out digits CNN** (a different network, trained here by PyTorch in
   ``.venv-train``, cached in ``.bench/distill``): teacher, pruned, distilled with defaults.
3. **Epoch time**: the same student, loss, optimizer and batch, one thread, native against
   PyTorch CPU and onnxruntime-training, in interleaved rounds; the fastest epoch (wall and
   process CPU seconds) of each.
4. **Quantization-aware distillation**: the distilled digits student and the distilled
   MiniLM quantized to int8 (calibrated QDQ) and int4 (block-wise weights), before and after
   distilling the quantized model itself.
5. **MiniLM-L6** (all-MiniLM-L6-v2, TorchScript export, pretrained), pruned at 0.5 (FFN and
   attention heads), distilled on real English sentences (the standard library's docstrings,
   then those of the packages installed in ``.venv-export``; none of those it is scored on):
   cosine of the sentence embeddings with the teacher's on 256 held-out sentences, before and
   after. The loss: cosine on the sentence embedding and on every layer's hidden states,
   padding left out (``mask=auto``); small batches (8), since at a fixed budget more steps
   won over bigger batches.
6. On a machine with CUDA (onnxruntime-gpu): the native epoch on CUDA against the CPU.

Targets: distilled within 0.5 point of the teacher on digits (both CNNs, default options);
MiniLM student cosine ≥ 0.97; quantization-aware distillation wins back at least half of what
quantization lost; native epoch ≤ 1.5× PyTorch's on the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from _evaluate import DIGITS_CNN, REPO, digits, digits_accuracy, session
from _report import consoles, work_folder
from onnx import numpy_helper
from rich.table import Table

__all__ = ["torch_student", "main"]

TRAIN_PYTHON = REPO / ".venv-train" / "bin" / "python"
EXPORT_PYTHON = REPO / ".venv-export" / "bin" / "python"
CACHE = REPO / ".bench" / "distill"
MINILM = "minilm-l6-torchscript"
GAP_TARGET = 0.005
COSINE_TARGET = 0.97
SPEED_TARGET = 1.5
QAT_TARGET = 0.5


# ------------------------------------------------------------------------ PyTorch worker


def torch_student(proto: onnx.ModelProto):
    """A torch module that runs an ONNX graph of Conv/Relu/Add/MaxPool/Flatten/Gemm nodes
    with the graph's initializers as trainable parameters."""
    import torch
    import torch.nn.functional as F

    def conv(node, attrs, x, w, b=None):
        pads = attrs.get("pads", [0, 0, 0, 0])
        return F.conv2d(
            x,
            w,
            b,
            stride=attrs.get("strides", 1),
            padding=pads[:2],
            dilation=attrs.get("dilations", 1),
            groups=attrs.get("group", 1),
        )

    def maxpool(node, attrs, x):
        pads = attrs.get("pads", [0, 0, 0, 0])
        return F.max_pool2d(
            x,
            attrs["kernel_shape"],
            stride=attrs.get("strides", attrs["kernel_shape"]),
            padding=pads[:2],
            ceil_mode=bool(attrs.get("ceil_mode", 0)),
        )

    def gemm(node, attrs, x, w, b=None):
        y = attrs.get("alpha", 1.0) * (x @ (w.t() if attrs.get("transB", 0) else w))
        return y if b is None else y + attrs.get("beta", 1.0) * b

    ops = {
        "Conv": conv,
        "Relu": lambda node, attrs, x: F.relu(x),
        "Add": lambda node, attrs, a, b: a + b,
        "MaxPool": maxpool,
        "Flatten": lambda node, attrs, x: torch.flatten(x, attrs.get("axis", 1)),
        "Gemm": gemm,
    }

    class Module(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.names = {}
            for index, tensor in enumerate(proto.graph.initializer):
                key = f"p{index}"
                self.names[tensor.name] = key
                value = torch.from_numpy(numpy_helper.to_array(tensor).copy())
                if value.is_floating_point():
                    self.register_parameter(key, torch.nn.Parameter(value))
                else:
                    self.register_buffer(key, value)
            self.nodes = [
                (n, {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute})
                for n in proto.graph.node
            ]
            unknown = {n.op_type for n, _ in self.nodes} - set(ops)
            if unknown:
                raise ValueError(f"no torch translation for {sorted(unknown)}")
            self.input = proto.graph.input[0].name
            self.output = proto.graph.output[0].name

        def forward(self, x):
            env = {self.input: x}
            env.update({name: getattr(self, key) for name, key in self.names.items()})
            for node, attrs in self.nodes:
                env[node.output[0]] = ops[node.op_type](node, attrs, *(env[i] for i in node.input))
            return env[self.output]

    return Module()


def _torch_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune the ONNX student in PyTorch with our loss, optimizer and schedule."""
    import torch
    import torch.nn.functional as F

    from onnxslim.distill.trainer import TrainOptions, learning_rate

    torch.manual_seed(job["seed"])
    torch.set_num_threads(job["threads"])
    data = digits()
    proto = onnx.load(job["student"])
    model = torch_student(proto)
    x, y = data["x_train"], data["y_train"].astype(np.int64)
    teacher = np.load(job["teacher_logits"])["logits"]
    reference = session(Path(job["student"])).run(None, {"image": x[:256]})[0]
    with torch.no_grad():
        drift = float(np.abs(model(torch.from_numpy(x[:256])).numpy() - reference).max())
    order = np.random.default_rng(job["seed"]).permutation(len(x))
    held_out = round(len(x) * 0.1)
    val, train = order[:held_out], order[held_out:]
    xt, yt, tt = (torch.from_numpy(a) for a in (x, y, teacher))
    optimizer = torch.optim.AdamW(model.parameters(), lr=job["lr"], weight_decay=0.0)
    options = TrainOptions(epochs=job["epochs"], lr=job["lr"], warmup=job["warmup"])
    steps = math.ceil(len(train) / job["batch_size"])
    rng = np.random.default_rng(job["seed"])
    walls, cpus, step = [], [], 0
    temperature, alpha = job["temperature"], job["alpha"]
    for _ in range(job["epochs"]):
        start, cpu = time.perf_counter(), time.process_time()
        model.train()
        shuffled = rng.permutation(train)
        for first in range(0, len(shuffled), job["batch_size"]):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(options, step, job["epochs"] * steps)
            step += 1
            index = torch.from_numpy(shuffled[first : first + job["batch_size"]])
            logits = model(xt[index])
            soft = F.kl_div(
                F.log_softmax(logits / temperature, -1),
                F.log_softmax(tt[index] / temperature, -1),
                log_target=True,
                reduction="batchmean",
            )
            loss = soft * temperature**2 + alpha * F.cross_entropy(logits, yt[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            float((model(xt[val]).argmax(-1) == yt[val]).float().mean())
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    with torch.no_grad():
        predicted = model(torch.from_numpy(data["x_test"])).argmax(-1).numpy()
    accuracy = float((predicted == data["y_test"]).mean())
    return {"accuracy": accuracy, "seconds": walls, "cpu_seconds": cpus, "drift": drift}


def _ort_training_worker(job: dict[str, Any]) -> dict[str, Any]:
    from onnxslim.distill import distill

    report = distill(
        DIGITS_CNN,
        job["student"],
        job["data"],
        job["output"],
        backend="ort-training",
        progress=False,
        **job["options"],
    )
    return {
        "accuracy": digits_accuracy(Path(job["output"])),
        "seconds": [e.seconds for e in report.epochs],
        "cpu_seconds": [e.cpu_seconds for e in report.epochs],
    }


def _heldout_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Train and export the held-out digits CNN: another design than the fixture (strided
    convolution, average pooling, no residual), another seed and width."""
    import torch
    from torch import nn

    torch.manual_seed(1)
    width = 24
    model = nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    data = digits()
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"].astype(np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(40):
        model.train()
        for index in torch.randperm(len(x), generator=generator).split(64):
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    torch.onnx.export(
        model,
        (x[:2],),
        job["output"],
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return {"accuracy": digits_accuracy(Path(job["output"]))}


_WORKERS = {
    "torch": _torch_worker,
    "ort-training": _ort_training_worker,
    "heldout": _heldout_worker,
}


def _in_train_env(kind: str, job: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """Run worker ``kind`` in ``.venv-train``; its result, or None without that environment."""
    if not TRAIN_PYTHON.is_file():
        return None
    request, result = folder / f"{kind}.job.json", folder / f"{kind}.result.json"
    request.write_text(json.dumps(job))
    command = [str(TRAIN_PYTHON), __file__, "--worker", kind, str(request), str(result)]
    subprocess.run(command, check=True, cwd=REPO)
    return json.loads(result.read_text())


# --------------------------------------------------------------------------- measuring


@dataclass
class Stage:
    """One row of a quality table."""

    model: str
    stage: str
    quality: float | None
    note: str = ""


def _distill(teacher: Path, student: Path, data: Path, output: Path, **options: Any):
    from onnxslim.distill import distill

    return distill(teacher, student, data, output, progress=False, **options)


def _prune(source: Path, output: Path) -> None:
    from onnxslim import optimize

    optimize(source, passes="prune-channels(ratio=0.5)", output=output)


def _quantize(source: Path, output: Path, spec: str) -> None:
    from onnxslim import optimize

    optimize(source, passes=spec, output=output)


def _teacher_kl(student: Path, data: dict) -> str:
    """KL(teacher ‖ student) of the softmax outputs on the test split, as a note: finer than
    top-1, where one image of the 450 is 0.22 point."""

    def log_softmax(path: Path) -> np.ndarray:
        logits = session(path).run(None, {"image": data["x_test"]})[0].astype(np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    teacher, ours = log_softmax(DIGITS_CNN), log_softmax(student)
    return f"KL to teacher {float((np.exp(teacher) * (teacher - ours)).sum(1).mean()):.4f}"


def _digits_section(args, folder: Path, log, stages: list[Stage]) -> dict:
    data = digits()
    train = folder / "digits_train.npz"
    np.savez(train, image=data["x_train"], labels=data["y_train"])
    calib = folder / "digits_calib.npz"
    np.savez(calib, image=data["x_train"][:256])
    pruned, distilled = folder / "digits_pruned.onnx", folder / "digits_distilled.onnx"
    _prune(DIGITS_CNN, pruned)
    options = {"threads": args.threads, "seed": args.seed}
    if args.quick:
        options["epochs"] = 8
    for stage, path in (("teacher", DIGITS_CNN), ("pruned 50%", pruned)):
        stages.append(Stage("digits CNN", stage, digits_accuracy(path, data)))
    log("digits: native distillation")
    _distill(DIGITS_CNN, pruned, train, distilled, **options)
    stages.append(
        Stage(
            "digits CNN",
            "distilled, native",
            digits_accuracy(distilled, data),
            _teacher_kl(distilled, data),
        )
    )
    log("digits: ort-training distillation (.venv-train)")
    ours = folder / "digits_ort_training.onnx"
    job = {"student": str(pruned), "data": str(train), "output": str(ours), "options": options}
    result = _in_train_env("ort-training", job, folder)
    stages.append(
        Stage(
            "digits CNN",
            "distilled, ort-training",
            result and result["accuracy"],
            "" if result else "needs .venv-train",
        )
    )
    log("digits: PyTorch fine-tune (.venv-train)")
    logits = folder / "teacher_logits.npz"
    np.savez(logits, logits=session(DIGITS_CNN).run(None, {"image": data["x_train"]})[0])
    from onnxslim.distill import DistillOptions

    defaults = DistillOptions(**{k: v for k, v in options.items() if k != "threads"})
    torch_job = {
        "student": str(pruned),
        "teacher_logits": str(logits),
        "epochs": defaults.epochs,
        "batch_size": defaults.batch_size,
        "lr": defaults.lr,
        "warmup": defaults.warmup,
        "temperature": defaults.temperature,
        "alpha": defaults.alpha,
        "seed": args.seed,
        "threads": args.threads or 1,
    }
    result = _in_train_env("torch", torch_job, folder)
    stages.append(
        Stage(
            "digits CNN",
            "PyTorch fine-tune, same loss",
            result and result["accuracy"],
            "" if result else "needs .venv-train",
        )
    )
    hard = folder / "digits_hard.onnx"
    _distill(DIGITS_CNN, pruned, train, hard, loss="ce", **options)
    stages.append(Stage("digits CNN", "hard labels only (ablation)", digits_accuracy(hard, data)))
    return {
        "train": train,
        "calib": calib,
        "pruned": pruned,
        "distilled": distilled,
        "logits": logits,
        "torch_job": torch_job,
        "options": options,
    }


def _heldout_section(args, folder: Path, log, stages: list[Stage], digits_files: dict) -> None:
    teacher = CACHE / "heldout_digits_cnn.onnx"
    if not teacher.is_file():
        log("held-out CNN: training it in .venv-train")
        CACHE.mkdir(parents=True, exist_ok=True)
        if _in_train_env("heldout", {"output": str(teacher)}, folder) is None:
            stages.append(Stage("held-out digits CNN", "teacher", None, "needs .venv-train"))
            return
    data = digits()
    pruned, distilled = folder / "heldout_pruned.onnx", folder / "heldout_distilled.onnx"
    _prune(teacher, pruned)
    log("held-out CNN: native distillation with default options")
    _distill(teacher, pruned, digits_files["train"], distilled, **digits_files["options"])
    for stage, path in (
        ("teacher", teacher),
        ("pruned 50%", pruned),
        ("distilled, native", distilled),
    ):
        stages.append(Stage("held-out digits CNN", stage, digits_accuracy(path, data)))


def _timing_section(args, folder: Path, log, digits_files: dict) -> dict[str, dict[str, float]]:
    """Fastest epoch of each trainer over interleaved rounds of a few epochs each."""
    epochs = 2 if args.quick else 3
    fastest: dict[str, dict[str, float]] = {}

    def record(name: str, walls: list[float], cpus: list[float]) -> None:
        best = fastest.setdefault(name, {"seconds": math.inf, "cpu_seconds": math.inf})
        best["seconds"] = min(best["seconds"], *walls)
        best["cpu_seconds"] = min(best["cpu_seconds"], *cpus)

    options = {
        **digits_files["options"],
        "epochs": epochs,
        "threads": args.threads or 1,
        "patience": 0,
    }
    for round_ in range(1 if args.quick else args.rounds):
        log(f"epoch time: round {round_ + 1}")
        output = folder / "timing_native.onnx"
        report = _distill(
            DIGITS_CNN, digits_files["pruned"], digits_files["train"], output, **options
        )
        record("native", [e.seconds for e in report.epochs], [e.cpu_seconds for e in report.epochs])
        result = _in_train_env("torch", {**digits_files["torch_job"], "epochs": epochs}, folder)
        if result:
            record("PyTorch", result["seconds"], result["cpu_seconds"])
        job = {
            "student": str(digits_files["pruned"]),
            "data": str(digits_files["train"]),
            "output": str(folder / "timing_ort.onnx"),
            "options": options,
        }
        result = _in_train_env("ort-training", job, folder)
        if result:
            record("ort-training", result["seconds"], result["cpu_seconds"])
    return fastest


def _digits_qat(args, folder: Path, log, stages: list[Stage], digits_files: dict) -> None:
    data = digits()
    specs = {
        "int8": f"quantize(calib={digits_files['calib']})",
        "int4": "quantize(weights=int4, activations=none)",
    }
    options = {**digits_files["options"], "epochs": 4 if args.quick else 10}
    for kind, spec in specs.items():
        quantized, trained = folder / f"digits_{kind}.onnx", folder / f"digits_{kind}_qat.onnx"
        _quantize(digits_files["distilled"], quantized, spec)
        log(f"digits: quantization-aware distillation, {kind}")
        _distill(DIGITS_CNN, quantized, digits_files["train"], trained, **options)
        stages.append(
            Stage(
                "digits CNN",
                f"distilled + {kind}",
                digits_accuracy(quantized, data),
                _teacher_kl(quantized, data),
            )
        )
        stages.append(
            Stage(
                "digits CNN",
                f"distilled + {kind}, then distilled (QAT)",
                digits_accuracy(trained, data),
                _teacher_kl(trained, data),
            )
        )


def _heldout_cosine(teacher: Path, student: Path) -> float:
    """Mean cosine of the sentence embeddings on the held-out sentences."""
    from real_models import feeds

    ours, theirs = session(teacher), session(student)
    cosines = []
    for feed in feeds(MINILM, "heldout", batch_size=32):
        a = ours.run(["sentence_embedding"], feed)[0].astype(np.float64)
        b = theirs.run(["sentence_embedding"], feed)[0].astype(np.float64)
        cosines.append((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
    return float(np.concatenate(cosines).mean())


def _minilm_training_data(folder: Path, count: int) -> Path:
    """``count`` sentences after the calibration and held-out ones (the standard library's,
    then the installed packages' docstrings: real_inputs.training_sentences), tokenized in
    .venv-export by real_models (32 tokens at most: the sentences average 18)."""
    path = CACHE / f"minilm_train_{count}.npz"
    if path.is_file():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    script = (
        "import sys, numpy as np; sys.path.insert(0, 'bench'); import real_inputs, real_models; "
        "start = real_models.CALIBRATION_SENTENCES + real_models.HELD_OUT_SENTENCES; "
        f"chosen = real_inputs.training_sentences({count}, offset=start); "
        "tokenizer = real_models.package_file(real_models._MINILM_L6 + '/tokenizer.json'); "
        "tokens = real_inputs.tokenize([s.text for s in chosen], tokenizer, max_tokens=32); "
        f"np.savez('{path}', **tokens)"
    )
    subprocess.run([str(EXPORT_PYTHON), "-c", script], check=True, cwd=REPO)
    return path


def _minilm_section(args, folder: Path, log, stages: list[Stage]) -> None:
    try:
        from real_models import data_path, real_model

        original = real_model(MINILM).path
    except (ImportError, FileNotFoundError) as exc:
        stages.append(Stage("MiniLM-L6", "teacher", None, str(exc).splitlines()[0]))
        return
    from onnxslim import optimize

    teacher, pruned = folder / "minilm.onnx", folder / "minilm_pruned.onnx"
    optimize(original, output=teacher)
    _prune(teacher, pruned)
    count = 512 if args.quick else args.sentences
    train = _minilm_training_data(folder, count)
    # The sentence embedding, and every layer's hidden states: the residual stream keeps its
    # width when heads and FFN units go, so each layer can follow its teacher's.
    layers = [
        f"/bert/encoder/layer.{i}/output/LayerNorm/LayerNormalization_output_0" for i in range(5)
    ]
    options = {
        "loss": "cosine",
        "outputs": ["sentence_embedding", *layers, "last_hidden_state"],
        "freeze": ["*embeddings*"],
        "epochs": 2 if args.quick else args.minilm_epochs,
        "batch_size": args.minilm_batch_size,
        "mask": args.minilm_mask,
        "lr": args.minilm_lr,
        "threads": 0,  # every core: this one is about quality, not a timing comparison
        "seed": args.seed,
    }
    distilled = folder / "minilm_distilled.onnx"
    log(f"MiniLM: distilling the pruned student on {count} sentences")
    _distill(teacher, pruned, train, distilled, **options)
    stages.append(Stage("MiniLM-L6", "pruned 50% (FFN + heads)", _heldout_cosine(teacher, pruned)))
    stages.append(
        Stage("MiniLM-L6", "pruned + distilled, native", _heldout_cosine(teacher, distilled))
    )
    log(f"MiniLM: {stages[-1].quality:.4f} after distillation (pruned: {stages[-2].quality:.4f})")
    if "qat" in args.skip:
        return
    calib = data_path(MINILM, "calib")
    specs = {
        # Static QDQ: the students distillation trains (quantize's default for a transformer,
        # dynamic activations, runs integer kernels that have no float form to train through).
        # Static int8 is what trained transformers' activation outliers hurt most, so the floor
        # is off here: QAT is what is measured.
        "int8": f"quantize(calib={calib}, activations=uint8, guard=false, min_cosine=0.0, "
        "min_top1=0.0)",
        # int4 blocks need opset 21
        "int4": "convert-opset(target=21),quantize(weights=int4, activations=none)",
    }
    for kind, spec in specs.items():
        quantized, trained = folder / f"minilm_{kind}.onnx", folder / f"minilm_{kind}_qat.onnx"
        _quantize(distilled, quantized, spec)
        log(f"MiniLM: quantization-aware distillation, {kind}")
        # half the schedule of the float student: QAT starts close to where it has to go
        epochs = max(1, options["epochs"] // 2)
        _distill(teacher, quantized, train, trained, **{**options, "epochs": epochs})
        stages.append(
            Stage(
                "MiniLM-L6",
                f"distilled + {kind}" + (" (static QDQ)" if kind == "int8" else ""),
                _heldout_cosine(teacher, quantized),
            )
        )
        stages.append(
            Stage(
                "MiniLM-L6",
                f"distilled + {kind}, then distilled (QAT)",
                _heldout_cosine(teacher, trained),
            )
        )


def _cuda_section(args, digits_files: dict, folder: Path) -> dict[str, float] | None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    times = {}
    for provider in ("cuda", "cpu"):
        report = _distill(
            DIGITS_CNN,
            digits_files["pruned"],
            digits_files["train"],
            folder / f"{provider}.onnx",
            **{**digits_files["options"], "epochs": 3, "patience": 0},
            provider=provider,
        )
        times[provider] = min(e.seconds for e in report.epochs)
    return times


# ---------------------------------------------------------------------------- reporting


def _quality_table(stages: list[Stage]) -> Table:
    table = Table(
        title="distillation (digits: top-1 on the test split; MiniLM: embedding cosine with "
        "the teacher on held-out sentences)"
    )
    for column in ("model", "stage", "quality", "vs teacher", "note"):
        table.add_column(column, justify="right" if column in ("quality", "vs teacher") else "left")
    first: dict[str, float | None] = {}
    models = list(dict.fromkeys(row.model for row in stages))
    for row in sorted(stages, key=lambda row: models.index(row.model)):
        reference = first.setdefault(row.model, row.quality)
        digits_model = row.model != "MiniLM-L6"
        if row.quality is None:
            value = delta = "—"
        elif digits_model:
            value = f"{row.quality:.2%}"
            delta = "" if reference is None else f"{(row.quality - reference) * 100:+.2f} pt"
        else:
            value, delta = f"{row.quality:.4f}", ""
        table.add_row(row.model, row.stage, value, delta, row.note)
    return table


def _speed_table(fastest: dict[str, dict[str, float]], threads: int) -> Table:
    table = Table(
        title=f"fastest epoch, digits student (same loss, optimizer, batch; {threads} thread)"
    )
    for column in ("trainer", "wall", "× PyTorch", "CPU", "× PyTorch"):
        table.add_column(column, justify="left" if column == "trainer" else "right")
    torch = fastest.get("PyTorch")
    for name, best in fastest.items():
        wall = f"{best['seconds'] / torch['seconds']:.2f}×" if torch else "—"
        cpu = f"{best['cpu_seconds'] / torch['cpu_seconds']:.2f}×" if torch else "—"
        table.add_row(name, f"{best['seconds']:.3f} s", wall, f"{best['cpu_seconds']:.3f} s", cpu)
    return table


def _checks(stages: list[Stage], fastest: dict) -> dict[str, bool | None]:
    by = {(s.model, s.stage): s.quality for s in stages}

    def gap(model: str) -> bool | None:
        teacher, ours = by.get((model, "teacher")), by.get((model, "distilled, native"))
        return None if teacher is None or ours is None else teacher - ours <= GAP_TARGET

    def recovered(
        model: str, kind: str, reference_stage: str, higher_better: bool = True
    ) -> bool | None:
        base = by.get((model, reference_stage))
        before = by.get((model, f"distilled + {kind}")) or by.get(
            (model, f"distilled + {kind} (static QDQ)")
        )
        after = by.get((model, f"distilled + {kind}, then distilled (QAT)"))
        if None in (base, before, after):
            return None
        lost = base - before
        return lost <= 0 or (after - before) >= QAT_TARGET * lost

    torch, native = fastest.get("PyTorch"), fastest.get("native")
    checks = {
        "digits CNN: distilled within 0.5 pt of the teacher": gap("digits CNN"),
        "held-out digits CNN: distilled within 0.5 pt of the teacher": gap("held-out digits CNN"),
        "MiniLM: distilled cosine ≥ 0.97": None
        if by.get(("MiniLM-L6", "pruned + distilled, native")) is None
        else by[("MiniLM-L6", "pruned + distilled, native")] >= COSINE_TARGET,
        "native epoch ≤ 1.5× PyTorch (wall)": None
        if not (torch and native)
        else native["seconds"] <= SPEED_TARGET * torch["seconds"],
    }
    for model, reference in (
        ("digits CNN", "distilled, native"),
        ("MiniLM-L6", "pruned + distilled, native"),
    ):
        for kind in ("int8", "int4"):
            checks[f"{model} {kind}: QAT wins back ≥ half the loss"] = recovered(
                model, kind, reference
            )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--worker", nargs=3, metavar=("KIND", "JOB", "RESULT"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--quick", action="store_true", help="Fewer epochs and sentences (a smoke test)."
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every trainer [1].")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved timing rounds [3].")
    parser.add_argument(
        "--sentences", type=int, default=16384, help="MiniLM training sentences [16384]."
    )
    parser.add_argument("--minilm-epochs", type=int, default=1)
    parser.add_argument("--minilm-batch-size", type=int, default=8)
    parser.add_argument(
        "--minilm-mask", default="auto", help="distill's mask for MiniLM: auto or none [auto]."
    )
    parser.add_argument("--minilm-lr", type=float, default=1e-3)
    parser.add_argument(
        "--skip", action="append", default=[], choices=["heldout", "timing", "qat", "minilm"]
    )
    parser.add_argument("--json", type=Path, help="Write the results here as JSON.")
    parser.add_argument("--work", type=Path, help="Keep the models in this folder.")
    args = parser.parse_args(argv)
    if args.worker:
        kind, job, result = args.worker
        Path(result).write_text(json.dumps(_WORKERS[kind](json.loads(Path(job).read_text()))))
        return 0
    console, _, log = consoles(120)
    folder, made = work_folder(args.work, "onnxslim-bench-distill-")
    stages: list[Stage] = []
    fastest: dict[str, dict[str, float]] = {}
    cuda = None
    try:
        files = _digits_section(args, folder, log, stages)
        if "heldout" not in args.skip:
            _heldout_section(args, folder, log, stages, files)
        if "qat" not in args.skip:
            _digits_qat(args, folder, log, stages, files)
        if "timing" not in args.skip:
            fastest = _timing_section(args, folder, log, files)
        if "minilm" not in args.skip:
            _minilm_section(args, folder, log, stages)
        cuda = _cuda_section(args, files, folder)
    finally:
        if made:
            shutil.rmtree(folder, ignore_errors=True)
    console.print(_quality_table(stages))
    if fastest:
        console.print(_speed_table(fastest, args.threads))
    if cuda:
        console.print(
            f"native epoch on CUDA {cuda['cuda']:.3f} s, on the CPU {cuda['cpu']:.3f} s "
            f"({cuda['cpu'] / cuda['cuda']:.1f}× faster)"
        )
    checks = _checks(stages, fastest)
    for name, ok in checks.items():
        mark = "[dim]not measured[/]" if ok is None else "[green]met[/]" if ok else "[red]missed[/]"
        console.print(f"{mark} {name}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "stages": [asdict(s) for s in stages],
                    "fastest_epoch": fastest,
                    "cuda": cuda,
                    "checks": checks,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
