"""rmsprop-repro's optimizer: one RMSprop for every published form, fused on CUDA.

    from optimizers import RMSprop                  # in place of torch.optim.RMSprop
    from optimizers import presets                  # presets.Graves, presets.from_name("dqn", ...)
"""

from . import presets, reference
from .presets import PRESETS, from_name
from .rmsprop import RMSprop

__all__ = ["PRESETS", "RMSprop", "from_name", "presets", "reference"]
