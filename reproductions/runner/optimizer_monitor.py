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

    step_size_hist          W&B histogram of lr / d (``histogram_bins`` equal bins over its sampled
                            range), per group and, with ``per_layer``, per layer

Statistics come from a fixed random sample of at most ``max_samples`` elements per tensor (all of a
small one), computed on the tensor's device, histograms included (counts and edges, no host
sync); one host copy per interval. Histograms go to every WandbLogger (``wandb.Histogram``), the
scalars to every logger. Optimizers whose state has no ``square_avg`` (Adam, SGD) are skipped;
``torch.optim.RMSprop`` is read like ours (no eps_in_sqrt: eps outside).
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor

from optimizers import reference
from optimizers.reference import Hyperparameters

QUANTILES = (0.1, 0.5, 0.9)


def step_sizes(state: dict[str, Tensor], group: dict[str, Any],
               index: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """On the sampled elements (``index`` None: all): lr / d, with d the denominator of
    ``optimizers.reference.denominator``; whether eps outweighs the statistic s it is added to
    (eps > s inside the root, eps > sqrt(s) outside); and s itself when centered, v^ - m^^2."""
    def take(t: Tensor) -> Tensor:
        flat = t.detach().reshape(-1).float()
        return flat if index is None else flat[index]

    # torch.optim.RMSprop's groups lack our extras: the reference's defaults are torch's
    hp = Hyperparameters(**{name: group[name] for name in Hyperparameters._fields if name in group})
    centered = hp.centered and "grad_avg" in state
    t = float(state["step"]) if hp.bias_correction else 0  # host copy only when it is used
    d, s = reference.denominator(take(state["square_avg"]),
                                 take(state["grad_avg"]) if centered else None, t,
                                 hp._replace(centered=centered))
    eps = float(hp.eps)
    eps_dominated = s < (eps if hp.eps_in_sqrt else eps * eps)
    return float(hp.lr) / d, eps_dominated, s if centered else None


def histogram(values: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Counts and edges of ``bins`` equal bins over [min, max] (numpy.histogram's rule: the last
    bin is closed), on the values' device without a host sync (torch.histogram is CPU-only and
    torch.histc wants host floats for its range)."""
    low, high = values.min(), values.max()
    width = (high - low).clamp_min(torch.finfo(values.dtype).tiny)
    index = ((values - low) / width * bins).floor().long().clamp_(0, bins - 1)
    counts = torch.bincount(index, minlength=bins)
    edges = low + (high - low) * torch.linspace(0, 1, bins + 1, device=values.device)
    return counts, edges


def rmsprop_statistics(v: Tensor, step_size: Tensor, eps_dominated: Tensor,
                       variance: Tensor | None, before: Tensor | None,
                       after: Tensor | None) -> dict[str, Tensor]:
    """The monitored quantities of one set of elements, as 0-dim tensors on their device."""
    quantiles = torch.quantile(step_size, torch.tensor(QUANTILES, device=step_size.device))
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
        histograms: log a W&B histogram of the step size per group (and per layer with
            ``per_layer``) to each WandbLogger.
        histogram_bins: equal-width bins of each histogram (W&B takes at most 512).
    """

    def __init__(self, every_n_steps: int = 100, max_samples: int = 4096, per_layer: bool = True,
                 histograms: bool = True, histogram_bins: int = 64, seed: int = 0) -> None:
        if every_n_steps < 0 or max_samples < 1 or not 1 <= histogram_bins <= 512:
            raise ValueError(f"RMSpropMonitor: every_n_steps must be >= 0, max_samples >= 1 and "
                             f"histogram_bins in [1, 512]; got {every_n_steps}, {max_samples} "
                             f"and {histogram_bins}")
        self.every_n_steps, self.max_samples = every_n_steps, max_samples
        self.per_layer, self.histograms, self.seed = per_layer, histograms, seed
        self.histogram_bins = histogram_bins
        self._handles: list[Any] = []
        self._counts: dict[int, int] = {}
        self._samples: dict[Tensor, Tensor | None] = {}
        self._before: dict[Tensor, Tensor] = {}
        self._names: dict[Tensor, str] = {}
        self._trainer: Trainer | None = None
        self.last_logged: dict[str, float] = {}
        self.last_histograms: dict[str, tuple[list[int], list[float]]] = {}

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
        return self.every_n_steps > 0 and self._counts[index] % self.every_n_steps == 0

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
    def measure(self, optimizer: torch.optim.Optimizer, index: int) -> dict[str, Any]:
        """The statistics of every group (and layer) of ``optimizer`` in its current state: 0-dim
        tensors, and (counts, edges) pairs for the histograms; all on the parameters' device."""
        prefix = f"train/optimizer{index}"
        metrics: dict[str, Any] = {}
        for group_index, group in enumerate(optimizer.param_groups):
            parts: dict[str, list[Tensor]] = {"v": [], "step": [], "eps": [], "var": [],
                                              "before": [], "after": []}
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                if "square_avg" not in state:
                    continue
                sample_index = self._index(p)
                v = state["square_avg"].detach().reshape(-1).float()
                v = v if sample_index is None else v[sample_index]
                step_size, eps_dominated, variance = step_sizes(state, group, sample_index)
                before = self._before.get(p)
                after = self._sample(p) if before is not None else None
                if self.per_layer:
                    name = self._names.get(p, f"group{group_index}.param{len(parts['v'])}")
                    layer = f"{prefix}/layer/{name}"
                    for key, value in rmsprop_statistics(v, step_size, eps_dominated, variance,
                                                         before, after).items():
                        metrics[f"{layer}/{key}"] = value
                    if self.histograms:
                        metrics[f"{layer}/step_size_hist"] = histogram(step_size,
                                                                       self.histogram_bins)
                parts["v"].append(v)
                parts["step"].append(step_size)
                parts["eps"].append(eps_dominated)
                if variance is not None:
                    parts["var"].append(variance)
                if before is not None:
                    parts["before"].append(before)
                    parts["after"].append(after)
            if not parts["v"]:
                continue
            joined = {k: torch.cat(v) if v else None for k, v in parts.items()}
            group_prefix = f"{prefix}/group{group_index}"
            for key, value in rmsprop_statistics(joined["v"], joined["step"], joined["eps"],
                                                 joined["var"], joined["before"],
                                                 joined["after"]).items():
                metrics[f"{group_prefix}/{key}"] = value
            if self.histograms:
                metrics[f"{group_prefix}/step_size_hist"] = histogram(joined["step"],
                                                                      self.histogram_bins)
        return metrics

    def publish(self, metrics: dict[str, Any]) -> None:
        """One host copy of all scalars and histograms; scalars to every logger, histograms to
        the WandbLoggers."""
        scalars = {k: v for k, v in metrics.items() if isinstance(v, Tensor)}
        histograms = {k: v for k, v in metrics.items() if isinstance(v, tuple)}
        pieces = [torch.stack(list(scalars.values()))] if scalars else []
        for counts, edges in histograms.values():
            pieces += [counts.float(), edges]
        hosted = torch.cat(pieces).cpu().tolist() if pieces else []
        self.last_logged = dict(zip(scalars, hosted[:len(scalars)]))
        self.last_histograms, offset = {}, len(scalars)
        for name, (counts, edges) in histograms.items():
            bins = counts.numel()
            self.last_histograms[name] = ([round(c) for c in hosted[offset:offset + bins]],
                                          hosted[offset + bins:offset + 2 * bins + 1])
            offset += 2 * bins + 1
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero:
            return
        step = trainer.global_step
        for logger in trainer.loggers:
            logger.log_metrics(self.last_logged, step=step)
            if isinstance(logger, WandbLogger) and self.last_histograms:
                import wandb

                logger.log_metrics({name: wandb.Histogram(np_histogram=pair)
                                    for name, pair in self.last_histograms.items()}, step=step)
