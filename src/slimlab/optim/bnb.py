"""bitsandbytes 8-bit optimizers: the target of `optimizer=adamw8bit|lion8bit|paged_adamw8bit`.

An 8-bit optimizer keeps its state (Adam's moments, Lion's momentum) in 8 bits: about 4x less
optimizer memory, the same training. It is an optimizer choice like `optimizer=adamw`, not a
compression of the model. bitsandbytes is optional (`pip install -e ".[bnb]"`) and slow to
import (~5 s), so it is imported only when the optimizer is built.
"""

from __future__ import annotations

from typing import Any

import torch

from slimlab.utils.errors import require
from slimlab.utils.optional import import_optional

OPTIMIZERS = ("AdamW8bit", "Adam8bit", "Lion8bit", "PagedAdamW8bit", "PagedLion8bit", "SGD8bit")


def bnb_optimizer(params: Any, name: str = "AdamW8bit", **kwargs: Any) -> torch.optim.Optimizer:
    """A bitsandbytes 8-bit optimizer `name` over `params` (kwargs: lr, weight_decay, ...).

    The optimizer configs are partials: the module calls this with its parameters.
    """
    require(
        name in OPTIMIZERS,
        f"model.optimizer.name={name!r} is not a bitsandbytes 8-bit optimizer: give one of "
        f"{list(OPTIMIZERS)}",
    )
    return getattr(import_optional("bitsandbytes", "bnb").optim, name)(params, **kwargs)
