"""Reference RMSProp: the published update rules as small pure functions.

This module is the specification that the fast paths (foreach, compiled, Triton) are tested
against. It favours legibility over speed: one tensor at a time, no in-place updates, and the
caller chooses the precision (the tests run it in float64).

Notation (``../shared/papers.md``): g gradient, v square average, m gradient average, b momentum
buffer, a decay (``alpha``), mu momentum, wd weight decay, t the step count after this step.

    g  <- -g                                       if maximize
    g  <- g + wd theta                             L2 weight decay (torch)
    theta <- theta (1 - lr wd)                     decoupled weight decay (Loshchilov & Hutter)
    v  <- a v + (1 - a) g^2                        Hinton lecture 6e
    m  <- a m + (1 - a) g                          centered (Graves 2013 eq. 39)
    v^ = v / (1 - a^t),  m^ = m / (1 - a^t)        if bias_correction, else v^ = v, m^ = m
    s  = v^ - m^^2  if centered  else  v^
    d  = sqrt(s + eps)  if eps_in_sqrt  else  sqrt(s) + eps
    u  = g / d
    without momentum:       theta <- theta - lr u
    momentum, lr outside:   b <- mu b + u;     theta <- theta - lr (u + mu b if nesterov else b)
    momentum, lr inside:    b <- mu b + lr u;  theta <- theta - (lr u + mu b if nesterov else b)

Graves 2013 eq. 38-41 is centered + eps_in_sqrt + lr inside momentum; TF1 adds v_0 = 1.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Hyperparameters(NamedTuple):
    """Every setting of the update rule; the defaults are ``torch.optim.RMSprop``'s."""

    lr: float = 1e-2
    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False
    eps_in_sqrt: bool = False
    initial_square_avg: float = 0.0
    lr_in_momentum: bool = False
    decoupled_weight_decay: bool = False
    nesterov: bool = False
    bias_correction: bool = False
    maximize: bool = False


class RMSpropState(NamedTuple):
    """Per-tensor state; field names are ``torch.optim.RMSprop``'s state keys."""

    step: int
    square_avg: Tensor
    grad_avg: Tensor | None
    momentum_buffer: Tensor | None


def init(param: Tensor, hp: Hyperparameters) -> RMSpropState:
    """State before the first step: v = v_0, m = 0, b = 0."""
    return RMSpropState(
        step=0,
        square_avg=torch.full_like(param, hp.initial_square_avg),
        grad_avg=torch.zeros_like(param) if hp.centered else None,
        momentum_buffer=torch.zeros_like(param) if hp.momentum > 0 else None,
    )


def update(
    param: Tensor, grad: Tensor, state: RMSpropState, hp: Hyperparameters
) -> tuple[Tensor, RMSpropState]:
    """One RMSProp step; returns the new parameter and state (see the module docstring)."""
    t = state.step + 1
    g = -grad if hp.maximize else grad
    if hp.weight_decay and hp.decoupled_weight_decay:
        param = param * (1 - hp.lr * hp.weight_decay)
    elif hp.weight_decay:
        g = g + hp.weight_decay * param

    v = hp.alpha * state.square_avg + (1 - hp.alpha) * g * g
    m = hp.alpha * state.grad_avg + (1 - hp.alpha) * g if hp.centered else None
    d, _ = denominator(v, m, t, hp)
    u = g / d

    b = None
    if hp.momentum > 0:
        scaled_u = hp.lr * u if hp.lr_in_momentum else u
        b = hp.momentum * state.momentum_buffer + scaled_u
        direction = scaled_u + hp.momentum * b if hp.nesterov else b
        param = param - (direction if hp.lr_in_momentum else hp.lr * direction)
    else:
        param = param - hp.lr * u
    return param, RMSpropState(step=t, square_avg=v, grad_avg=m, momentum_buffer=b)


def denominator(v: Tensor, m: Tensor | None, t: int | float | Tensor,
                hp: Hyperparameters) -> tuple[Tensor, Tensor]:
    """RMSProp's denominator d, and the statistic s that eps is added to (inside or outside the
    root), from the state v, m after step t:

        v^ = v / (1 - a^t),  m^ = m / (1 - a^t)    if bias_correction, else v^ = v, m^ = m
        s = v^ - m^^2  if centered  else  v^
        d = sqrt(s + eps)  if eps_in_sqrt  else  sqrt(s) + eps
    """
    correction = 1 - hp.alpha**t if hp.bias_correction else 1.0
    s = v / correction
    if hp.centered:
        s = s - (m / correction) ** 2
    d = torch.sqrt(s + hp.eps) if hp.eps_in_sqrt else torch.sqrt(s) + hp.eps
    return d, s


def graves_update(
    w: Tensor, grad: Tensor, n: Tensor, g_avg: Tensor, delta: Tensor,
    lr: float = 1e-4, a: float = 0.95, mu: float = 0.9, k: float = 1e-4,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Graves 2013 eq. 38-41 written literally, as a second independent reference.

    n = a n + (1-a) g^2;  g_avg = a g_avg + (1-a) g;  D = mu D - lr g / sqrt(n - g_avg^2 + k);
    w = w + D.  Returns (w, n, g_avg, D).
    """
    n = a * n + (1 - a) * grad**2
    g_avg = a * g_avg + (1 - a) * grad
    delta = mu * delta - lr * grad / torch.sqrt(n - g_avg**2 + k)
    return w + delta, n, g_avg, delta

