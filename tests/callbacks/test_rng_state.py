"""RNGStateCallback: the generators a checkpoint stores are the ones a resume continues with."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from slimlab.callbacks import RNGStateCallback


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_saved_generators_are_restored_when_training_starts() -> None:
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    buffer = io.BytesIO()
    torch.save(RNGStateCallback().state_dict(), buffer)
    expected = draws()
    draws()  # the generators move on (a sanity check, a restore, ...)
    buffer.seek(0)
    resumed = RNGStateCallback()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))  # plain data only
    resumed.on_train_start(None, None)
    assert draws() == expected
