"""The train state: arrays only, no RNG (the step is folded into one base key)."""

from __future__ import annotations

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the config and the seed.

    Attributes:
      step: int32 scalar, number of updates applied so far.
      params: the online network's parameters.
      batch_stats: BatchNorm running statistics of the online network.
      opt_state: the optax state.
      extra: owned by the method: EMA target params/batch_stats, MoCo queue and pointer,
        DINO center, ... ({} when the method keeps nothing).
      probe: the online linear probe's ``params`` and ``opt_state`` (``evaluate/online.py``),
        ``{}`` when there is none.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    extra: Any
    probe: Any = flax.struct.field(default_factory=dict)
