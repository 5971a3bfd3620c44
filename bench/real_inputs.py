"""Real inputs for the pretrained models of ``real_models.py``: text, images, audio.

Everything is found on the machine or made from a fixed seed, so that a benchmark measures
pretrained models on meaningful data without a network:

- :func:`sentences` — English sentences from the docstrings of the Python standard library,
  filtered and shuffled with a fixed seed; ``sentences(128)`` and ``sentences(256, offset=128)``
  are disjoint (calibration and held-out); :func:`training_sentences` continues them with the
  docstrings of the installed packages, for training sets larger than the standard library;
- :func:`tokenize` — the MiniLM tokenizer (``tokenizer.json`` through ``tokenizers``), padded
  to the longest sentence of the call;
- :func:`sample_images` — scikit-learn's and scikit-image's sample photographs (RGB uint8),
  :func:`ocr_det_input`, :func:`ocr_line_input` — rapidocr's preprocessing for PP-OCR,
  :func:`render_text_line` — a sentence drawn in a font found on the machine (OCR with
  ground truth);
- :func:`speech_like_audio` — a synthesized, clearly *not recorded* 16 kHz stand-in for
  speech (no speech recording ships with any package here).

Only numpy and the standard library are imported at the top: text harvesting runs in the
project's ``.venv``; tokenizing needs ``tokenizers`` and images need Pillow (both in
``.venv-export``), imported when used.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import random
import re
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "SEED",
    "Sentence",
    "harvest_sentences",
    "sentences",
    "training_sentences",
    "tokenize",
    "sample_images",
    "CALIBRATION_IMAGES",
    "HELD_OUT_IMAGES",
    "ocr_det_input",
    "ocr_line_input",
    "render_text_line",
    "text_line_boxes",
    "split_wide_line",
    "speech_like_audio",
    "SAMPLE_RATE",
]

SEED = 0
SAMPLE_RATE = 16_000
MAX_TOKENS = 128
_SKIPPED_FOLDERS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
# Characters that mark code, markup or identifiers rather than prose.
_NOT_PROSE = re.compile(r"[`=<>{}\[\]_\\|*#@$~^]|>>>|\.\.\.|::|https?:")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@dataclass(frozen=True)
class Sentence:
    """One harvested sentence and the standard-library module whose docstring held it."""

    text: str
    module: str


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                yield inspect.cleandoc(docstring)


def _prose_paragraphs(docstring: str) -> Iterator[str]:
    """Paragraphs of running text: indented blocks (code, tables) and doctests are left out."""
    for paragraph in re.split(r"\n\s*\n", docstring):
        lines = paragraph.splitlines()
        if lines and not any(line.startswith((" ", "\t", ">>>")) for line in lines):
            yield " ".join(line.strip() for line in lines)


def _is_prose_sentence(text: str) -> bool:
    if not 30 <= len(text) <= 300 or not text[0].isupper() or text[-1] not in ".!?":
        return False
    if _NOT_PROSE.search(text):
        return False
    letters = sum(ch.isalpha() or ch == " " for ch in text)
    return letters / len(text) >= 0.9 and len(text.split()) >= 5


def harvest_sentences(stdlib: Path | None = None) -> list[Sentence]:
    """Every prose sentence of the docstrings under ``stdlib`` (default: the standard
    library; any folder of Python files works), deduplicated, shuffled.

    Files are read in sorted order and shuffled with :data:`SEED`, so the list is the same on
    every machine with the same Python version (the sentences differ between versions).
    """
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    found: list[Sentence] = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if _SKIPPED_FOLDERS & set(relative.parts):
            continue
        module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        for docstring in _docstrings(path):
            for paragraph in _prose_paragraphs(docstring):
                for text in _SENTENCE_END.split(paragraph):
                    text = " ".join(text.split())
                    key = text.lower()
                    if key not in seen and _is_prose_sentence(text):
                        seen.add(key)
                        found.append(Sentence(text, module))
    random.Random(SEED).shuffle(found)
    return found


def _sentence_cache() -> Path:
    version = ".".join(map(str, sys.version_info[:3]))
    return Path(__file__).resolve().parent.parent / ".bench" / "real" / f"sentences-{version}.json"


def _harvested() -> list[Sentence]:
    """The standard library's sentences (cached after the first call; harvesting parses the
    whole standard library, about 10 s)."""
    cache = _sentence_cache()
    if cache.is_file():
        return [Sentence(**item) for item in json.loads(cache.read_text())]
    harvested = harvest_sentences()
    _write_cache(cache, harvested)
    return harvested


def _write_cache(cache: Path, found: list[Sentence]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial")
    partial.write_text(json.dumps([s.__dict__ for s in found], indent=0))
    partial.replace(cache)


def sentences(n: int, offset: int = 0) -> list[Sentence]:
    """``n`` sentences starting at ``offset`` of the standard library's list."""
    harvested = _harvested()
    if offset + n > len(harvested):
        raise ValueError(f"only {len(harvested)} sentences were harvested, asked for {offset + n}")
    return harvested[offset : offset + n]


def _package_sentences() -> list[Sentence]:
    """The prose sentences of the installed packages' docstrings (the running interpreter's
    site-packages) that are not standard-library sentences; cached like :func:`sentences`
    (harvesting takes minutes: torch and transformers alone hold most of them)."""
    version = ".".join(map(str, sys.version_info[:3]))
    cache = _sentence_cache().with_name(f"package-sentences-{version}.json")
    if cache.is_file():
        return [Sentence(**item) for item in json.loads(cache.read_text())]
    stdlib = {s.text.lower() for s in _harvested()}
    harvested = harvest_sentences(Path(sysconfig.get_paths()["purelib"]))
    found = [s for s in harvested if s.text.lower() not in stdlib]
    _write_cache(cache, found)
    return found


def training_sentences(n: int, offset: int) -> list[Sentence]:
    """``n`` sentences from ``offset`` of the standard library's list, continued by those of
    the installed packages once it runs out: training text disjoint from the calibration and
    held-out sentences before ``offset``."""
    stdlib = _harvested()
    chosen = stdlib[offset : offset + n]
    if len(chosen) < n:
        extra = _package_sentences()
        if len(chosen) + len(extra) < n:
            raise ValueError(
                f"only {len(stdlib) - offset + len(extra)} training sentences were harvested, "
                f"asked for {n}"
            )
        chosen += extra[: n - len(chosen)]
    return chosen


def tokenize(
    texts: Sequence[str], tokenizer_json: Path, max_tokens: int = MAX_TOKENS
) -> dict[str, np.ndarray]:
    """``input_ids``, ``attention_mask``, ``token_type_ids`` (int64 ``[len(texts), L]``),
    padded with ``[PAD]`` (id 0, mask 0) to the longest text, truncated at ``max_tokens``.

    The tokenizer file ships padded to a fixed 128; that is switched off, as
    sentence-transformers pads each batch to its longest sentence.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_tokens)
    encodings = tokenizer.encode_batch(list(texts))
    length = max(len(e.ids) for e in encodings)
    arrays = {
        name: np.zeros((len(encodings), length), np.int64)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    for row, encoding in enumerate(encodings):
        size = len(encoding.ids)
        arrays["input_ids"][row, :size] = encoding.ids
        arrays["attention_mask"][row, :size] = encoding.attention_mask
        arrays["token_type_ids"][row, :size] = encoding.type_ids
    return arrays


# ---------------------------------------------------------------------------------- images

CALIBRATION_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "text")
HELD_OUT_IMAGES = ("china", "flower", "page", "motorcycle_left")


def _image_files() -> dict[str, Path]:
    """Sample photographs of scikit-learn (``.jpg``) and scikit-image (its bundled files)."""
    files: dict[str, Path] = {}
    for package, pattern in (("sklearn", "datasets/images/*.jpg"), ("skimage", "data/*")):
        folder = _package_folder(package)
        if folder is None:
            continue
        for path in sorted(folder.glob(pattern)):
            if path.suffix in {".jpg", ".png"}:
                files[path.stem] = path
    return files


def _package_folder(package: str) -> Path | None:
    """Where ``package`` is installed, without importing it (scikit-image is installed
    without its dependencies, only for its data files)."""
    from importlib.util import find_spec

    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sample_images(names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named sample images as RGB uint8 ``[H, W, 3]`` arrays (grey ones repeated)."""
    from PIL import Image

    files = _image_files()
    missing = [name for name in names if name not in files]
    if missing:
        raise FileNotFoundError(
            f"sample image(s) {', '.join(missing)} not found: install scikit-learn and "
            "scikit-image (bash bench/setup_peers.sh export)"
        )
    return {name: np.asarray(Image.open(files[name]).convert("RGB")) for name in names}


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize (Pillow's; rapidocr uses cv2.resize's bilinear, which rounds alike)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def _normalize_bgr(image: np.ndarray) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` to rapidocr's network input ``[3, H, W]``: BGR (rapidocr reads
    images with OpenCV's channel order) scaled to ``[-1, 1]`` (mean 0.5, std 0.5)."""
    bgr = image[..., ::-1].astype(np.float32) / 255.0
    return ((bgr - 0.5) / 0.5).transpose(2, 0, 1)


def ocr_det_input(image: np.ndarray, limit_side_len: int = 736) -> np.ndarray:
    """PP-OCR detector input ``[1, 3, H, W]`` as rapidocr makes it (``limit_type: min``): the
    shorter side scaled up to ``limit_side_len`` if below it, both sides rounded to
    multiples of 32."""
    height, width = image.shape[:2]
    ratio = limit_side_len / min(height, width) if min(height, width) < limit_side_len else 1.0
    new_height = max(32, int(round(int(height * ratio) / 32) * 32))
    new_width = max(32, int(round(int(width * ratio) / 32) * 32))
    return _normalize_bgr(_resize(image, new_width, new_height))[None]


def ocr_line_input(line: np.ndarray, width: int, height: int = 48) -> np.ndarray:
    """PP-OCR recognizer/classifier input ``[3, height, width]`` for one text-line crop, as
    rapidocr's ``resize_norm_img``: scaled to ``height`` keeping the aspect ratio (squeezed
    to ``width`` if wider), normalized, zero-padded on the right to ``width``.

    rapidocr uses ``width = 48 * max(320 / 48, widest aspect ratio in the batch)`` for the
    recognizer and 192 for the classifier."""
    ratio = line.shape[1] / line.shape[0]
    resized_width = min(width, int(math.ceil(height * ratio)))
    padded = np.zeros((3, height, width), np.float32)
    padded[:, :, :resized_width] = _normalize_bgr(_resize(line, resized_width, height))
    return padded


def text_line_boxes(
    probability: np.ndarray, threshold: float = 0.3
) -> list[tuple[int, int, int, int]]:
    """Boxes ``(top, bottom, left, right)`` of horizontal text lines in a detector
    probability map ``[H, W]``: runs of rows with text pixels, each widened by half its
    height on every side (rapidocr's unclip margin: the map marks the letters' cores).

    A simple stand-in for rapidocr's polygon post-processing (OpenCV, shapely, pyclipper),
    good enough for straight lines of print such as scikit-image's ``page``."""
    text = probability > threshold
    rows = text.sum(axis=1) >= 3
    boxes = []
    top = None
    for row, has_text in enumerate([*rows, False]):
        if has_text and top is None:
            top = row
        elif not has_text and top is not None:
            columns = np.flatnonzero(text[top:row].any(axis=0))
            margin = int(round(0.5 * (row - top)))
            if row - top >= 4 and columns[-1] - columns[0] > row - top:  # not a speck
                boxes.append(
                    (
                        max(0, top - margin),
                        min(text.shape[0], row + margin),
                        max(0, int(columns[0]) - margin),
                        min(text.shape[1], int(columns[-1]) + 1 + margin),
                    )
                )
            top = None
    return boxes


def split_wide_line(line: np.ndarray, max_ratio: float = 14.0) -> list[np.ndarray]:
    """A line image cut at the word gap nearest its middle while it is wider than
    ``max_ratio`` times its height: rapidocr's recognizer batches are 320 / 48 wide, and
    one long line would pad a whole batch to its width."""
    height, width = line.shape[:2]
    if width <= max_ratio * height:
        return [line]
    # Contrast within each column of the middle rows: ink makes it high, a gap low, whatever
    # the page's uneven lighting.
    middle = line.min(axis=2)[height // 4 : height - height // 4].astype(float)
    contrast = middle.max(axis=0) - middle.min(axis=0)
    blank = contrast < 0.2 * contrast.max()
    # Word gaps: runs of blank columns wider than a third of the height (letters are closer).
    edges = np.flatnonzero(np.diff(np.concatenate([[0], blank.astype(np.int8), [0]])))
    gaps = np.array(
        [(start + stop) // 2 for start, stop in edges.reshape(-1, 2) if stop - start > height / 3]
    )
    gaps = gaps[(gaps > height) & (gaps < width - height)]
    if not gaps.size:
        return [line]
    cut = int(gaps[np.argmin(np.abs(gaps - width / 2))])
    return split_wide_line(line[:, :cut], max_ratio) + split_wide_line(line[:, cut:], max_ratio)


def _font_files() -> list[Path]:
    return (
        sorted(Path("/usr/share/fonts").rglob("DejaVu*.ttf"))
        if Path("/usr/share/fonts").is_dir()
        else []
    )


def render_text_line(text: str, seed: int, height: int = 32) -> np.ndarray:
    """``text`` drawn dark on a light, slightly noisy background: an RGB uint8 line image.

    The font is one of the DejaVu fonts found on the machine (chosen by ``seed``), else
    Pillow's built-in font; the lines are synthetic renderings of real sentences, with the
    sentence as ground truth for the recognizer.
    """
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = [f for f in _font_files() if "Math" not in f.name and "Oblique" not in f.name]
    size = int(height * 0.75)
    font = (
        ImageFont.truetype(str(fonts[seed % len(fonts)]), size)
        if fonts
        else ImageFont.load_default(size)
    )
    left, top, right, bottom = font.getbbox(text)
    pad = height // 4
    canvas = Image.new("L", (right - left + 2 * pad, height), int(rng.integers(200, 256)))
    ink = int(rng.integers(0, 70))
    ImageDraw.Draw(canvas).text((pad - left, (height - (bottom - top)) // 2 - top), text, ink, font)
    grey = np.asarray(canvas, np.float32) + rng.normal(0, 6, (height, canvas.width))
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


# ----------------------------------------------------------------------------------- audio


def speech_like_audio(seconds: float, seed: int) -> np.ndarray:
    """A synthesized 16 kHz float32 signal with the coarse structure of speech: voiced
    stretches (a glottal pulse train at 90-220 Hz with jitter, through three vowel formant
    resonators, amplitude-modulated at a syllable rate of about 4 Hz) separated by pauses of
    low background noise.

    A *stand-in*: no speech recording is installed on these machines (the only ``.wav`` files
    are the standard library's test tones), so a VAD's decisions on it are not a quality
    measure on real speech; it exercises the model's recurrent state with realistic levels.
    """
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    total = int(seconds * SAMPLE_RATE)
    audio = rng.normal(0, 0.003, total).astype(np.float64)
    vowels = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480))
    position = int(rng.uniform(0.2, 0.6) * SAMPLE_RATE)
    while position < total:
        length = min(total - position, int(rng.uniform(0.6, 2.0) * SAMPLE_RATE))
        time = np.arange(length) / SAMPLE_RATE
        pitch = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * time))
        phase = np.cumsum(pitch / SAMPLE_RATE)
        source = np.diff(np.floor(phase), prepend=0.0) + rng.normal(0, 0.02, length)
        voiced = np.zeros(length)
        for start in range(0, length, SAMPLE_RATE // 4):  # a vowel per syllable
            stop = min(length, start + SAMPLE_RATE // 4)
            part = source[start:stop]
            for formant in vowels[int(rng.integers(len(vowels)))]:
                radius = math.exp(-math.pi * 80 / SAMPLE_RATE)
                angle = 2 * math.pi * formant / SAMPLE_RATE
                part = lfilter([1.0], [1, -2 * radius * math.cos(angle), radius**2], part)
            voiced[start:stop] = part
        envelope = np.clip(np.sin(np.pi * 4 * time + rng.uniform(0, np.pi)), 0.15, None)
        voiced *= envelope * np.hanning(length) ** 0.2
        voiced *= rng.uniform(0.1, 0.4) / (np.abs(voiced).max() + 1e-9)
        audio[position : position + length] += voiced
        position += length + int(rng.uniform(0.3, 1.0) * SAMPLE_RATE)
    return np.clip(audio, -1, 1).astype(np.float32)
