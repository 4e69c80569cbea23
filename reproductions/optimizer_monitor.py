"""``RMSpropMonitor``: RMSProp's own state, logged at intervals, per parameter group and per layer.

Every ``every_n_steps`` steps of an optimizer (its own steps: a GAN's two optimizers are counted
apart), right after the step, it reads ``optimizer.state[p]`` and the group's settings and logs,
under ``train/optimizer{i}/group{j}/...`` and ``train/optimizer{i}/layer/<param name>/...``:

    step_size_p10/p50/p90   lr / d, the effective per-element step size; d is the denominator
                            sqrt(s) + eps, or sqrt(s + eps) with eps_in_sqrt, where s = v^, or
                            v^ - m^^2 when centered (hats: bias-corrected when bias_correction)
    update_to_weight        ||theta_after - theta_before|| / ||theta_before||, the step it took
    eps_dominated           fraction of elements where eps outweighs the statistic it is added to:
                            eps > sqrt(s) (eps outside the root) or eps > s (inside)
    square_avg_min/max      range of v
    variance_min            centered only: min of v^ - m^^2 (0 or below means d rests on eps)
    variance_nonpositive    centered only: fraction of elements with v^ - m^^2 <= 0

Statistics come from a fixed random sample of at most ``max_samples`` elements per tensor (all of a
small one), computed on the tensor's device; one host copy per interval. Histograms of the step
size go to W&B when a logger is a WandbLogger. Optimizers whose state has no ``square_avg``
(Adam, SGD) are skipped; ``torch.optim.RMSprop`` is read like ours (no eps_in_sqrt: eps outside).
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor

QUANTILES = (0.1, 0.5, 0.9)


def denominator_statistic(state: dict[str, Tensor], group: dict[str, Any],
                          index: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """s (what eps is added to, before or after the root) and, when centered, v^ - m^^2 itself;
    both on the sampled elements (``index`` None: all)."""
    def take(t: Tensor) -> Tensor:
        flat = t.detach().reshape(-1).float()
        return flat if index is None else flat[index]

    v = take(state["square_avg"])
    correction = 1.0
    if group.get("bias_correction") and "step" in state:
        correction = 1 - group["alpha"] ** float(state["step"])
    s = v / correction
    variance = None
    if group.get("centered") and "grad_avg" in state:
        variance = s - (take(state["grad_avg"]) / correction) ** 2
        s = variance
    return s, variance


def rmsprop_statistics(v: Tensor, s: Tensor, variance: Tensor | None, group: dict[str, Any],
                       before: Tensor | None, after: Tensor | None) -> dict[str, Tensor]:
    """The monitored quantities of one set of elements, as 0-dim tensors on their device."""
    lr, eps = float(group["lr"]), float(group["eps"])
    if group.get("eps_in_sqrt"):
        denominator = torch.sqrt(s.clamp_min(0) + eps)
        eps_dominated = eps > s
    else:
        root = torch.sqrt(s.clamp_min(0))
        denominator = root + eps
        eps_dominated = eps > root
    step_size = lr / denominator
    quantiles = torch.quantile(step_size, torch.tensor(QUANTILES, device=s.device))
    stats = {f"step_size_p{round(q * 100)}": value for q, value in zip(QUANTILES, quantiles)}
    stats["eps_dominated"] = eps_dominated.float().mean()
    stats["square_avg_min"], stats["square_avg_max"] = v.min(), v.max()
    if variance is not None:
        stats["variance_min"] = variance.min()
        stats["variance_nonpositive"] = (variance <= 0).float().mean()
    if before is not None and after is not None:
        stats["update_to_weight"] = (after - before).norm() / before.norm().clamp_min(1e-30)
    return stats


class RMSpropMonitor(Callback):
    """Logs RMSProp's state every ``every_n_steps`` optimizer steps (see the module docstring).

    Args:
        every_n_steps: interval in steps of each optimizer; 0 turns the monitor off.
        max_samples: elements sampled per tensor (a fixed random subset, drawn once).
        per_layer: also log each parameter tensor, named as in ``named_parameters()``.
        histograms: log a W&B histogram of the step size per group (WandbLogger only).
    """

    def __init__(self, every_n_steps: int = 100, max_samples: int = 4096, per_layer: bool = True,
                 histograms: bool = True, seed: int = 0) -> None:
        if every_n_steps < 0 or max_samples < 1:
            raise ValueError(f"RMSpropMonitor: every_n_steps must be >= 0 and max_samples >= 1, "
                             f"got {every_n_steps} and {max_samples}")
        self.every_n_steps, self.max_samples = every_n_steps, max_samples
        self.per_layer, self.histograms, self.seed = per_layer, histograms, seed
        self._handles: list[Any] = []
        self._counts: dict[int, int] = {}
        self._samples: dict[Tensor, Tensor | None] = {}
        self._before: dict[Tensor, Tensor] = {}
        self._names: dict[Tensor, str] = {}
        self._trainer: Trainer | None = None
        self.last_logged: dict[str, float] = {}

    # -- wiring ----------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.every_n_steps:
            return
        self._trainer = trainer
        self._names = {p: name for name, p in pl_module.named_parameters()}
        for index, optimizer in enumerate(trainer.optimizers):
            self.attach(optimizer, index)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.detach()

    def attach(self, optimizer: torch.optim.Optimizer, index: int) -> None:
        """Hook ``optimizer.step``: snapshot the sampled weights before a due step, read the state
        after it. Usable without a Trainer (the tests do)."""
        self._counts[index] = 0

        def pre_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if self._due(index):
                self._before = {p: self._sample(p).clone() for g in opt.param_groups
                                for p in g["params"]}

        def post_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if self._due(index):
                self.publish(self.measure(opt, index))
            self._counts[index] += 1

        self._handles += [optimizer.register_step_pre_hook(pre_hook),
                          optimizer.register_step_post_hook(post_hook)]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._before = [], {}

    def _due(self, index: int) -> bool:
        return self._counts[index] % self.every_n_steps == 0

    def _index(self, p: Tensor) -> Tensor | None:
        if p not in self._samples:
            n = p.numel()
            if n <= self.max_samples:
                self._samples[p] = None
            else:
                generator = torch.Generator().manual_seed(self.seed + len(self._samples))
                self._samples[p] = torch.randperm(n, generator=generator)[:self.max_samples].to(
                    p.device)
        return self._samples[p]

    def _sample(self, p: Tensor) -> Tensor:
        index = self._index(p)
        flat = p.detach().reshape(-1).float()
        return flat if index is None else flat[index]

    # -- measuring -------------------------------------------------------------------------------
    def measure(self, optimizer: torch.optim.Optimizer, index: int) -> dict[str, Tensor]:
        """The statistics of every group (and layer) of ``optimizer`` in its current state."""
        prefix = f"train/optimizer{index}"
        metrics: dict[str, Tensor] = {}
        for group_index, group in enumerate(optimizer.param_groups):
            parts: dict[str, list[Tensor]] = {"v": [], "s": [], "var": [], "before": [], "after": []}
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                if "square_avg" not in state:
                    continue
                sample_index = self._index(p)
                v = state["square_avg"].detach().reshape(-1).float()
                v = v if sample_index is None else v[sample_index]
                s, variance = denominator_statistic(state, group, sample_index)
                before = self._before.get(p)
                after = self._sample(p) if before is not None else None
                if self.per_layer:
                    name = self._names.get(p, f"group{group_index}.param{len(parts['v'])}")
                    for key, value in rmsprop_statistics(v, s, variance, group, before,
                                                         after).items():
                        metrics[f"{prefix}/layer/{name}/{key}"] = value
                parts["v"].append(v)
                parts["s"].append(s)
                if variance is not None:
                    parts["var"].append(variance)
                if before is not None:
                    parts["before"].append(before)
                    parts["after"].append(after)
            if not parts["v"]:
                continue
            joined = {k: torch.cat(v) if v else None for k, v in parts.items()}
            for key, value in rmsprop_statistics(joined["v"], joined["s"], joined["var"], group,
                                                 joined["before"], joined["after"]).items():
                metrics[f"{prefix}/group{group_index}/{key}"] = value
            if self.histograms:
                lr = float(group["lr"])
                s = joined["s"].clamp_min(0)
                denominator = (torch.sqrt(s + float(group["eps"])) if group.get("eps_in_sqrt")
                               else torch.sqrt(s) + float(group["eps"]))
                metrics[f"{prefix}/group{group_index}/step_size_hist"] = lr / denominator
        return metrics

    def publish(self, metrics: dict[str, Tensor]) -> None:
        """One host copy of all scalars; histograms only to W&B."""
        scalars = {k: v for k, v in metrics.items() if v.dim() == 0}
        hosted = dict(zip(scalars, torch.stack(list(scalars.values())).cpu().tolist())) \
            if scalars else {}
        self.last_logged = hosted
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero:
            return
        step = trainer.global_step
        for logger in trainer.loggers:
            logger.log_metrics(hosted, step=step)
            if isinstance(logger, WandbLogger):
                import wandb

                histograms = {k: wandb.Histogram(v.cpu().numpy()) for k, v in metrics.items()
                              if v.dim() == 1}
                if histograms:
                    logger.log_metrics(histograms, step=step)

