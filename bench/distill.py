"""Benchmark: prune → distill → quantize on the digits CNN, and training speed against PyTorch.

Run in ``.venv-train`` (onnxruntime-training and torch). Stages, each scored by top-1 accuracy
on the digits test split and by file size:

* the teacher (``fixtures/digits_cnn.onnx``);
* pruned: ``prune-channels(ratio=0.5)``, no training;
* pruned + distilled: ``onnxslim.distill`` (kl, T=4, plus 0.5 × cross-entropy with labels);
* the ablation: the same pruned student fine-tuned on hard labels alone (``loss=ce``), same
  epochs, learning rate and seed;
* distilled + quantized: ``quantize`` (int8, calibrated on training images).

Targets: pruned + distilled within 1 point of the teacher and above the ablation; the final
file ≤ 0.15× the teacher's. Training speed: the fastest epoch (training steps and the
validation pass; the minimum, because other processes only ever add time) of
onnxruntime-training against the same student, loss, optimizer, batch size and validation split
in PyTorch on the CPU (the student is translated from its ONNX graph, and checked to give the
same logits); target ≤ 1.5×. Both trainers use ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from _evaluate import DIGITS_CNN, digits, digits_accuracy, session
from _report import consoles, work_folder
from onnx import numpy_helper
from rich.table import Table

from onnxslim import optimize
from onnxslim.distill import distill
from onnxslim.registry import registered_passes

__all__ = ["torch_student", "torch_fastest_epoch", "main"]

ACCURACY_GAP = 0.01
SIZE_TARGET = 0.15
SPEED_TARGET = 1.5
TEMPERATURE = 4.0
ALPHA = 0.5


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


def torch_fastest_epoch(
    student: Path,
    teacher_logits: np.ndarray,
    data: dict[str, np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    val_split: float,
    seed: int,
    threads: int,
) -> tuple[float, float]:
    """The fastest epoch of the same training in PyTorch, in seconds, and the largest logit
    difference between the torch translation and onnxruntime before training."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    proto = onnx.load(str(student))
    model = torch_student(proto)
    x, y = data["x_train"], data["y_train"].astype(np.int64)
    reference = session(student).run(None, {"image": x[:256]})[0]
    with torch.no_grad():
        drift = float(np.abs(model(torch.from_numpy(x[:256])).numpy() - reference).max())
    order = np.random.default_rng(seed).permutation(len(x))
    held_out = round(len(x) * val_split)
    val, train = order[:held_out], order[held_out:]
    xt, yt, tt = (torch.from_numpy(a) for a in (x, y, teacher_logits))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, eps=1e-6)
    rng = np.random.default_rng(seed)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        shuffled = rng.permutation(train)
        for first in range(0, len(shuffled), batch_size):
            batch = shuffled[first : first + batch_size]
            index = torch.from_numpy(batch)
            logits = model(xt[index])
            soft = F.kl_div(
                F.log_softmax(logits / TEMPERATURE, -1),
                F.log_softmax(tt[index] / TEMPERATURE, -1),
                log_target=True,
                reduction="batchmean",
            )
            loss = soft * TEMPERATURE**2 + ALPHA * F.cross_entropy(logits, yt[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            float((model(xt[val]).argmax(-1) == yt[val]).float().mean())
        seconds.append(time.perf_counter() - start)
    return min(seconds), drift


def _size(path: Path) -> int:
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer epochs (a smoke test).")
    parser.add_argument("--epochs", type=int, default=None, help="Training epochs [30; quick 6].")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads of both trainers (0: their default)."
    )
    parser.add_argument("--json", type=Path, help="Write the results here as JSON.")
    parser.add_argument("--work", type=Path, help="Keep the models in this folder.")
    args = parser.parse_args(argv)
    epochs = args.epochs or (6 if args.quick else 30)
    console, _, log = consoles(120)
    missing = {"prune-channels", "quantize"} - set(registered_passes())
    if missing:
        console.print(f"[red]missing passes: {', '.join(sorted(missing))}[/]")
        return 2

    folder, made = work_folder(args.work, "onnxslim-bench-distill-")
    data = digits()
    train_npz = folder / "train.npz"
    np.savez(train_npz, image=data["x_train"], labels=data["y_train"])
    calib_npz = folder / "calib.npz"
    np.savez(calib_npz, image=data["x_train"][:256])
    common = dict(
        epochs=epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        patience=0,
        threads=args.threads,
    )
    stages: list[dict[str, Any]] = []

    def stage(name: str, path: Path, **extra: Any) -> None:
        accuracy = digits_accuracy(path, data)
        stages.append({"stage": name, "accuracy": accuracy, "bytes": _size(path), **extra})
        log(f"{name}: {accuracy:.2%}")

    try:
        stage("teacher", DIGITS_CNN)
        pruned = folder / "pruned.onnx"
        optimize(DIGITS_CNN, passes="prune-channels(ratio=0.5)", output=pruned)
        stage("pruned 50%", pruned)

        distilled = folder / "distilled.onnx"
        report = distill(
            DIGITS_CNN, pruned, train_npz, distilled, temperature=TEMPERATURE, alpha=ALPHA, **common
        )
        stage("pruned + distilled", distilled, seconds_per_epoch=report.seconds_per_epoch)

        ablation = folder / "ablation.onnx"
        hard = distill(DIGITS_CNN, pruned, train_npz, ablation, loss="ce", **common)
        stage("pruned + hard labels (ablation)", ablation, seconds_per_epoch=hard.seconds_per_epoch)

        quantized = folder / "quantized.onnx"
        optimize(distilled, passes=f"quantize(calib={calib_npz})", output=quantized)
        stage("distilled + int8", quantized)

        teacher_logits = session(DIGITS_CNN).run(None, {"image": data["x_train"]})[0]
        torch_epoch, drift = torch_fastest_epoch(
            pruned,
            teacher_logits,
            data,
            epochs=epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            val_split=0.1,
            seed=args.seed,
            threads=args.threads,
        )
        log(f"torch translation: max |logit difference| {drift:.2e}")
    finally:
        if made:
            shutil.rmtree(folder, ignore_errors=True)

    teacher = stages[0]
    table = Table(title=f"digits CNN: prune → distill → quantize ({epochs} epochs)")
    for column in ("stage", "top-1", "vs teacher", "file", "× teacher size"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in stages:
        table.add_row(
            row["stage"],
            f"{row['accuracy']:.2%}",
            f"{(row['accuracy'] - teacher['accuracy']) * 100:+.2f} pt",
            f"{row['bytes'] / 1024:.1f} KiB",
            f"{row['bytes'] / teacher['bytes']:.3f}",
        )
    console.print(table)
    ours = min(epoch.seconds for epoch in report.epochs)
    threads = args.threads or "default"
    speed = Table(title=f"fastest epoch (same student, loss, optimizer, batch; threads: {threads})")
    for column in ("onnxruntime-training", "PyTorch CPU", "ratio", "target"):
        speed.add_column(column, justify="right")
    speed.add_row(f"{ours:.3f} s", f"{torch_epoch:.3f} s", f"{ours / torch_epoch:.2f}×", "≤ 1.5×")
    console.print(speed)

    by_name = {row["stage"]: row for row in stages}
    distilled_row = by_name["pruned + distilled"]
    checks = {
        "distilled within 1 point of the teacher": teacher["accuracy"] - distilled_row["accuracy"]
        <= ACCURACY_GAP,
        "distilled beats hard labels": distilled_row["accuracy"]
        > by_name["pruned + hard labels (ablation)"]["accuracy"],
        "final size ≤ 0.15× teacher": stages[-1]["bytes"] <= SIZE_TARGET * teacher["bytes"],
        "training ≤ 1.5× PyTorch per epoch": ours <= SPEED_TARGET * torch_epoch,
    }
    for name, ok in checks.items():
        console.print(f"{'[green]met' if ok else '[red]missed'}[/] {name}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "epochs": epochs,
                    "stages": stages,
                    "fastest_epoch_seconds": {"onnxruntime_training": ours, "torch": torch_epoch},
                    "torch_logit_drift": drift,
                    "checks": checks,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
