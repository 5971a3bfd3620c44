"""Validation scores, higher is better: top-1 for logits, cosine for everything else."""

from __future__ import annotations

import numpy as np

__all__ = ["top1", "mean_cosine", "metric_name"]


def top1(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None) -> float:
    """Share of positions whose top class is the label's (or, without labels, the teacher's)."""
    reference = labels if labels is not None else teacher.argmax(axis=-1)
    return float((student.argmax(axis=-1) == reference).mean())


def mean_cosine(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None) -> float:
    """Mean cosine similarity along the last axis."""
    a, b = student.astype(np.float64), teacher.astype(np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cosine = np.where(norms > 0, (a * b).sum(axis=-1) / np.maximum(norms, 1e-300), 1.0)
    return float(cosine.mean())


def metric_name(loss: str, labels: bool) -> str:
    if loss not in ("kl", "ce"):
        return "cosine"
    return "top-1 accuracy" if labels else "top-1 agreement"
