"""Named presets: the published RMSProp settings (``../shared/papers.md``), one class each.

Each preset is a subclass of :class:`~optimizers.RMSprop` whose signature carries the preset's
values as defaults, so any of them can still be overridden, from Python::

    from optimizers import presets
    opt = presets.Graves(model.parameters())             # Graves 2013 eq. 38-41
    opt = presets.from_name("graves", model.parameters(), lr=3e-4)

and from a LightningCLI YAML config (the config shows the effective values)::

    optimizer:
      class_path: optimizers.presets.Graves
      init_args: {lr: 3.0e-4}
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any, NamedTuple

from torch import Tensor

from .rmsprop import RMSprop


class Preset(NamedTuple):
    name: str
    source: str
    settings: dict[str, Any]


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("pytorch", "torch.optim.RMSprop defaults", {}),
        Preset("hinton", "Tieleman & Hinton 2012, lecture 6e: decay 0.9, eps outside the root "
               "(the lecture fixes no lr; 1e-3 is the customary value)",
               {"lr": 1e-3, "alpha": 0.9}),
        Preset("tensorflow1", "tf.train.RMSPropOptimizer: v starts at 1, eps 1e-10 inside the "
               "root, lr inside momentum, decay 0.9 (TF1 has no default lr; 1e-3 as Keras)",
               {"lr": 1e-3, "alpha": 0.9, "eps": 1e-10, "initial_square_avg": 1.0,
                "eps_in_sqrt": True, "lr_in_momentum": True}),
        Preset("keras", "keras.optimizers.RMSprop (Keras 3): lr 1e-3, rho 0.9, eps 1e-7 inside "
               "the root, lr inside momentum",
               {"lr": 1e-3, "alpha": 0.9, "eps": 1e-7, "eps_in_sqrt": True,
                "lr_in_momentum": True}),
        Preset("graves", "Graves 2013 (arXiv:1308.0850) eq. 38-41: centered, k = 1e-4 inside the "
               "root, momentum 0.9 with lr inside, decay 0.95, lr 1e-4",
               {"lr": 1e-4, "alpha": 0.95, "eps": 1e-4, "momentum": 0.9, "centered": True,
                "eps_in_sqrt": True, "lr_in_momentum": True}),
        Preset("dqn", "Mnih et al. 2015 (Nature), DeepMind's Lua code: centered, eps 0.01 inside "
               "the root, decay 0.95, lr 2.5e-4, no momentum",
               {"lr": 2.5e-4, "alpha": 0.95, "eps": 0.01, "centered": True, "eps_in_sqrt": True}),
        Preset("wgan", "Arjovsky et al. 2017 (arXiv:1701.07875) Algorithm 1: lr 5e-5; the "
               "reference code keeps torch's alpha 0.99 and eps 1e-8",
               {"lr": 5e-5}),
        Preset("bn_lstm", "Cooijmans et al. 2016 (arXiv:1603.09025): lr 1e-3; the paper's "
               "'0.9 momentum' read as the authors' code does, decay 0.9 and no momentum",
               {"lr": 1e-3, "alpha": 0.9}),
    )
}


def _preset_class(preset: Preset) -> type[RMSprop]:
    """A subclass of RMSprop whose signature defaults are the preset's settings."""
    base = inspect.signature(RMSprop.__init__)
    unknown = set(preset.settings) - set(base.parameters)
    if unknown:
        raise TypeError(f"preset {preset.name!r} sets unknown arguments {sorted(unknown)}")
    signature = base.replace(parameters=[
        parameter.replace(default=preset.settings.get(name, parameter.default))
        if parameter.default is not inspect.Parameter.empty else parameter
        for name, parameter in base.parameters.items()
    ])

    def __init__(self, params, *args, **kwargs):  # noqa: N807 - signature set below
        bound = signature.bind(self, params, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments["self"]
        RMSprop.__init__(self, **arguments)

    __init__.__signature__ = signature
    class_name = "".join(part.capitalize() for part in preset.name.split("_"))
    settings = ", ".join(f"{k}={v!r}" for k, v in preset.settings.items()) or "torch's defaults"
    __init__.__doc__ = f"RMSprop preset {preset.name!r}: {settings}."
    return type(class_name, (RMSprop,), {
        "__init__": __init__,
        "__doc__": f"RMSprop with the {preset.name!r} preset. Source: {preset.source}.\n\n"
                   f"Defaults: {settings}; every argument can be overridden.",
        "__module__": __name__,
        "preset": preset,
    })


Pytorch = _preset_class(PRESETS["pytorch"])
Hinton = _preset_class(PRESETS["hinton"])
Tensorflow1 = _preset_class(PRESETS["tensorflow1"])
Keras = _preset_class(PRESETS["keras"])
Graves = _preset_class(PRESETS["graves"])
Dqn = _preset_class(PRESETS["dqn"])
Wgan = _preset_class(PRESETS["wgan"])
BnLstm = _preset_class(PRESETS["bn_lstm"])
PRESET_CLASSES: dict[str, type[RMSprop]] = {
    cls.preset.name: cls for cls in (Pytorch, Hinton, Tensorflow1, Keras, Graves, Dqn, Wgan, BnLstm)
}


def from_name(name: str, params: Iterable[Tensor] | Iterable[dict], **overrides: Any) -> RMSprop:
    """An RMSprop with the named preset's settings, any of them overridden by ``overrides``."""
    if name not in PRESET_CLASSES:
        raise ValueError(f"unknown RMSprop preset {name!r}; choose one of {sorted(PRESET_CLASSES)}")
    return PRESET_CLASSES[name](params, **overrides)
