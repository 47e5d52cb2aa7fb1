"""Parity of an exported artifact with the PyTorch model it came from, on a labelled split."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from slimlab.inference.runtime import Runner


def parity(
    reference: Runner,
    runners: Mapping[str, Runner],
    batches: Iterable[tuple[Mapping[str, np.ndarray], np.ndarray]],
) -> dict[str, dict[str, Any]]:
    """Per runner: top-1 agreement with `reference`, max abs logit difference, both accuracies.

    `batches` yields (feed, labels); every runner sees the same feeds.
    """
    agree = {name: 0 for name in runners}
    correct = {name: 0 for name in runners}
    max_diff = {name: 0.0 for name in runners}
    reference_correct = seen = 0
    for feed, labels in batches:
        expected = reference(feed)
        top1 = expected.argmax(1)
        reference_correct += int((top1 == labels).sum())
        seen += len(labels)
        for name, run in runners.items():
            logits = run(feed)
            agree[name] += int((logits.argmax(1) == top1).sum())
            correct[name] += int((logits.argmax(1) == labels).sum())
            max_diff[name] = max(max_diff[name], float(np.abs(logits - expected).max()))
    if seen == 0:
        raise ValueError("parity needs at least one labelled batch: the split is empty")
    return {
        name: {
            "samples": seen,
            "top1_agreement": agree[name] / seen,
            "max_abs_logit_diff": max_diff[name],
            "accuracy_torch": reference_correct / seen,
            "accuracy": correct[name] / seen,
        }
        for name in runners
    }
