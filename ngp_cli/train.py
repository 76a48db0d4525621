"""The task-agnostic training loop: step, log, checkpoint, resume, Ctrl-C.

A task supplies a :class:`Problem` (a model and a function giving the loss of one random batch). The loop owns the
optimizer (Adam, paper §4), the optional EMA of the weights and tiny-cuda-nn's ExponentialDecay learning-rate schedule,
the metrics.jsonl lines, the progress display and the checkpoints. Everything random in a step draws from one
``torch.Generator`` whose state is checkpointed, so ``--resume`` reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ngp_cli.allocator import tune_cpu_allocator
from ngp_cli.config import LossConfig, OptimizerConfig, RunConfig
from ngp_cli.console import emit, info, stderr_console, warn
from ngp_cli.cuda import runtime
from ngp_cli.distributed import (
    World,
    all_reduce_gradients,
    all_reduce_sum,
    check_replicas,
    comm_seconds,
    current_world,
    gather_objects,
    resolve_shards,
    shard_generators,
)
from ngp_cli.errors import ConfigError, DataError, DivergedError, Interrupted
from ngp_cli.metrics import luminance, mse_to_psnr
from ngp_cli.runs import LoadedCheckpoint, RunDir


class Problem(Protocol):
    """What a task gives the loop.

    A problem may also set or define:

    * ``progress_metric``: ``"psnr"`` (the default when absent: the batch PSNR computed from the ``mse`` of
      :meth:`batch_loss` is shown in the progress line) or None (a PSNR means nothing for this task, e.g. SDF distances
      under a MAPE loss: the progress line shows the loss only);
    * ``before_step(step, generator)``: called before each step (0-based ``step``);
    * ``generator_device``: the device of the sampling generator (default the CPU; see :func:`sampling_generator`);
    * ``log_metrics() -> dict``: called after each log step (where the loop reads the device anyway); its numbers join
      the metrics line. The one place a problem may read its device state back on the host;
    * ``host_state() -> dict`` / ``load_host_state(dict)``: JSON-able host-side state the problem's batches depend on,
      saved with every checkpoint (so ``--resume`` continues exactly);
    * ``model_parallel = True``: each process holds its own part of the model (the spatially partitioned NeRF,
      :mod:`ngp_cli.tasks.nerf.partition`) and exchanges what it needs inside ``batch_loss`` and in an optional
      ``after_backward()`` (called after every backward pass, before the optimizer step): every process then draws
      the same batches from the one sampling generator, the loop all-reduces no gradient and makes no replica check,
      every process takes part in the periodic evaluations, and the problem's ``checkpoint_tensors(tensors)``
      (a collective: the whole model's checkpoint on rank 0, None elsewhere) and ``local_tensors(tensors)`` (this
      process's share of one) assemble and split checkpoints.
    """

    model: nn.Module

    def batch_loss(self, batch_size: int, generator: torch.Generator,
                   loss_fn: Callable) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Draw one random batch with ``generator`` and return ``(loss, mse)``: the scalar loss to minimise (computed
        with ``loss_fn(pred, target)``) and the batch's mean squared error in normalised units (for the batch PSNR),
        a detached 0-dim tensor or a float. Neither is read back here: the loop reads them on log steps only, so a
        step on a GPU never waits for the device."""
        ...


# ---------------------------------------------------------------------------------------------------------------------
# Loss, optimizer, schedule, EMA


def make_loss(cfg: LossConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Loss functions with tiny-cuda-nn's names (src/loss.cu): L2, L1, RelativeL2 = (p-t)²/(p²+0.01), RelativeL1 =
    |p-t|/(|p|+0.01), both relative ones with the prediction's magnitude detached as in tcnn, MAPE = |p-t|/(|t|+0.01)
    (tcnn's mean absolute percentage error, the paper's SDF loss §5.2), RelativeL2Luminance = (p-t)²/(lum(p)²+0.01)
    with the prediction's Rec. 709 luminance detached (tcnn; the radiance-cache loss of Müller et al. 2021), and
    instant-ngp's NeRF Huber loss (δ = 0.1: 0.5 d²/δ for |d| < δ, |d| - δ/2 beyond). Returns the mean."""
    if cfg.otype == "L2":
        return lambda p, t: (p - t).square().mean()
    if cfg.otype == "L1":
        return lambda p, t: (p - t).abs().mean()
    if cfg.otype == "Huber":  # instant-ngp's huber_loss(diff, 0.1): 0.5 d²/0.1 below 0.1, |d| - 0.05 above
        return lambda p, t: torch.nn.functional.huber_loss(p, t, delta=0.1) / 0.1
    if cfg.otype == "RelativeL2Luminance":
        def relative_l2_luminance(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return ((p - t).square() / (luminance(p.detach()).square().unsqueeze(1) + 0.01)).mean()

        return relative_l2_luminance
    if cfg.otype == "MAPE":
        return lambda p, t: ((p - t).abs() / (t.abs() + 0.01)).mean()
    if cfg.otype == "RelativeL2":
        return lambda p, t: ((p - t).square() / (p.detach().square() + 0.01)).mean()
    return lambda p, t: ((p - t).abs() / (p.detach().abs() + 0.01)).mean()


def make_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam with the paper's β=(0.9, 0.99), ε=1e-15 and L2 ``l2_reg`` on the MLP weights only (``param_groups``).

    With ``cfg.skip_zero_grad`` hash-table entries whose gradient is exactly 0 are left alone (paper §4): that is
    tiny-cuda-nn's Adam, :class:`ngp_cli.nn.optim.Adam`, run as the ``adam_step`` kernel on the ``cpu``/``cuda``
    backends (``model.kernel_target``) and in torch otherwise. Every backend runs the same algorithm: without skipping,
    the kernel backends use the same kernel with dense steps and the torch backend ``torch.optim.Adam`` (identical
    up to where ε enters, 1e-15).
    """
    groups = model.param_groups(cfg.l2_reg) if hasattr(model, "param_groups") else [{"params": model.parameters()}]
    target = getattr(model, "kernel_target", None)
    if target is not None or cfg.skip_zero_grad:
        from ngp_cli.nn.optim import Adam

        grid = any(getattr(m, "levels", None) is not None for m in model.modules())  # has a grid encoding
        for g in groups:
            name = g.pop("name", None)
            g["skip_zero_grad"] = cfg.skip_zero_grad and grid and name == "encoding"
        return Adam(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.epsilon, target=target)
    for g in groups:
        g.pop("name", None)
    # foreach on CPU measured fastest of the three torch implementations here; fused needs matching devices.
    return torch.optim.Adam(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.epsilon,
                            foreach=True)


def learning_rate(cfg: OptimizerConfig, step: int) -> float:
    """tiny-cuda-nn ExponentialDecay: lr·base^k with k = number of multiples of ``decay_interval`` reached since
    ``decay_start`` (counting ``decay_start`` itself) at 0-based ``step``."""
    if cfg.decay_base >= 1.0 or step < cfg.decay_start:
        return cfg.learning_rate
    return cfg.learning_rate * cfg.decay_base ** ((step - cfg.decay_start) // cfg.decay_interval + 1)


class EMA:
    """Exponential moving average of parameters, tiny-cuda-nn ``Ema`` (src/optimizers/average.h style):
    ``avg ← d·avg + (1−d)·w`` from zero, read with the bias correction ``avg / (1 − d^t)``."""

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.steps = 0
        self.shadow = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        torch._foreach_mul_(self.shadow, self.decay)
        torch._foreach_add_(self.shadow, [p.detach() for p in self.params], alpha=1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily load the bias-corrected averages into the parameters (for evaluation)."""
        if self.steps == 0:
            yield
            return
        correction = 1.0 - self.decay ** self.steps
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow, strict=True):
                p.copy_(s / correction)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)


def sampling_generator(cfg: RunConfig, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator every random draw of a training step uses, seeded apart from the initialisation (``seed + 1``).
    On the CPU unless the problem draws its batches on the GPU (``generator_device``): CPU runs then draw the same
    batches whatever the backend."""
    return torch.Generator(device=device).manual_seed(cfg.seed + 1)


def train_step(problem: Problem, optimizer: torch.optim.Optimizer, loss_fn: Callable,
               generator: torch.Generator | Mapping[int, torch.Generator], batch_size: int, *, shards: int = 1,
               world: World | None = None) -> tuple[torch.Tensor, torch.Tensor | float]:
    """One optimisation step: draw a batch, backpropagate, update. Returns ``(loss, mse)``: the detached 0-dim loss
    tensor and the problem's mse, neither read back from the device (so the host never waits for it).

    Data parallel (:mod:`ngp_cli.distributed`): ``generator`` is then this process's shard generators by shard index,
    each drawing ``batch_size / shards`` samples (a problem defining ``use_shard(k, shards)`` is told which shard
    draws next); each shard's loss is back-propagated divided by ``shards``, the gradients (with
    the loss and mse) are summed over the processes of ``world``, and every process takes the same step: the returned
    loss and mse are the whole batch's means.

    A non-finite loss still updates the weights (finding out would mean waiting for the device): :class:`Trainer`
    watches for it on the device and stops before any checkpoint holds such weights.
    """
    if isinstance(generator, torch.Generator):
        loss, mse = problem.batch_loss(batch_size, generator, loss_fn)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        after_backward = getattr(problem, "after_backward", None)
        if after_backward is not None:
            after_backward()
        optimizer.step()
        return loss.detach(), mse
    optimizer.zero_grad(set_to_none=True)
    per = batch_size // shards
    total = None
    use_shard = getattr(problem, "use_shard", None)
    for k, g in generator.items():
        if use_shard is not None:
            use_shard(k, shards)
        loss, mse = problem.batch_loss(per, g, loss_fn)
        (loss / shards).backward()
        part = torch.stack([loss.detach().float(), torch.as_tensor(mse, dtype=torch.float32,
                                                                   device=loss.device)]) / shards
        total = part if total is None else total + part
    total = all_reduce_gradients(problem.model, world or current_world(), total)
    optimizer.step()
    return total[0], total[1]


class DivergenceWatch:
    """The first step with a non-finite loss, tracked on the loss's device (no host synchronisation per step)."""

    def __init__(self) -> None:
        self.step: torch.Tensor | None = None  # 0-dim int64, -1 while every loss was finite
        self.loss: torch.Tensor | None = None  # 0-dim float64, the first non-finite loss

    def observe(self, loss: torch.Tensor, step: int) -> None:
        """Record ``loss`` (a 0-dim tensor) of the 1-based ``step``. Device ops only."""
        if self.step is None:
            self.step = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self.loss = torch.zeros((), dtype=torch.float64, device=loss.device)
        first = ~torch.isfinite(loss) & (self.step < 0)
        self.loss = torch.where(first, loss.double(), self.loss)
        self.step = torch.where(first, step, self.step)

    def values(self) -> list[torch.Tensor]:
        """The tensors to read back, as float64 (for one batched read with the loop's other numbers)."""
        if self.step is None:
            return []
        return [self.step.double(), self.loss]

    @staticmethod
    def check(step: float, loss: float) -> None:
        """Raise DivergedError when the read-back ``step`` is >= 0."""
        if step >= 0:
            raise DivergedError(f"loss is {loss} at step {int(step)}; try a lower optimizer.learning_rate")


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint state


def state_tensors(model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A training state as named tensors: ``model.*`` (state dict), ``optim.<param index>.<key>`` (the optimizer's
    per-parameter state), ``ema.<i>`` (the EMA's shadow weights) and ``rng.generator`` (``generator``'s state, when
    given). What checkpoints hold and what :func:`~ngp_cli.distributed.check_replicas` compares."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
    if ema is not None:
        tensors.update({f"ema.{i}": s for i, s in enumerate(ema.shadow)})
    if generator is not None:
        tensors["rng.generator"] = generator.get_state()
    return tensors


def _load_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], model: nn.Module,
                optimizer: torch.optim.Optimizer, ema: EMA | None, generator: torch.Generator) -> None:
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        if not state:
            warn(f"the checkpoint of step {meta.get('step')} has no optimizer state (saved with "
                 "--no-save-optimizer): Adam's moments restart from zero")
        if isinstance(optimizer, torch.optim.Adam):  # maybe a checkpoint of the kernel backends' Adam
            from ngp_cli.nn.optim import torch_adam_state

            state = {idx: torch_adam_state(st) for idx, st in state.items()}
        osd = optimizer.state_dict()
        osd["state"] = state
        optimizer.load_state_dict(osd)
        if ema is not None:
            for i, s in enumerate(ema.shadow):
                s.copy_(tensors[f"ema.{i}"])
            ema.steps = int(meta.get("ema_steps", 0))
        generator.set_state(tensors["rng.generator"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise DataError(f"checkpoint does not match this run's model/config: {' '.join(str(exc).split())}") from None


def load_trained_weights(run: RunDir, model: nn.Module, cfg: RunConfig) -> dict[str, Any]:
    """Load the newest checkpoint of ``run`` into ``model`` for evaluation: the EMA of the weights (bias-corrected)
    when the run keeps one, else the weights. Returns the checkpoint's metadata (``step``, ...).

    Raises:
        DataError: the run has no checkpoint, or it does not match the model.
    """
    found = run.latest_checkpoint()  # a corrupt newest one falls back to the newest intact one, with a warning
    if found is None:
        raise DataError(f"{run.path} has no checkpoint yet (train it first, or --resume it)")
    tensors, meta = found.tensors, found.meta
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        steps = int(meta.get("ema_steps", 0))
        if cfg.optimizer.ema_decay > 0 and steps > 0:
            correction = 1.0 - cfg.optimizer.ema_decay ** steps
            with torch.no_grad():
                for i, p in enumerate(model.parameters()):
                    p.copy_(tensors[f"ema.{i}"] / correction)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise DataError(f"checkpoint of {run.path} does not match its config: {' '.join(str(exc).split())}") from None
    return meta


# ---------------------------------------------------------------------------------------------------------------------
# Progress display


class _Progress:
    """A rich progress bar on stderr when it is a terminal; plain log lines on stderr otherwise. The PSNR shown is
    the training batch's (labelled so: it differs from a task's final full-input PSNR), and only with ``show_psnr``."""

    def __init__(self, total: int, start: int, quiet: bool, show_psnr: bool = True) -> None:
        self.total = total
        self.show_psnr = show_psnr
        self.console = stderr_console()
        self.bar = None
        if not quiet and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            psnr = "  batch PSNR {task.fields[psnr]} dB" if show_psnr else ""
            self.bar = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                                TextColumn("{task.fields[rate]} it/s  loss {task.fields[loss]}" + psnr),
                                TimeRemainingColumn(), console=self.console, redirect_stdout=False,
                                redirect_stderr=False, transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, rate="-", loss="-", psnr="-")
            self.bar.start()

    def advance(self, step: int, record: dict[str, Any] | None) -> None:
        if self.bar is not None:
            fields = {}
            if record is not None:
                fields = {"rate": f"{record['steps_per_s']:.2f}", "loss": f"{record['loss']:.3e}",
                          "psnr": f"{record['psnr']:.2f}"}
            self.bar.update(self.task, completed=step, **fields)
        elif record is not None:
            psnr = f"  batch PSNR {record['psnr']:.2f} dB" if self.show_psnr else ""
            info(f"step {step}/{self.total}  loss {record['loss']:.4e}{psnr}  "
                 f"{record['steps_per_s']:.2f} it/s  {record['samples_per_s']:.3g} samples/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---------------------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainState:
    """Where training stands. ``elapsed_s`` counts training time only, summed over resumed sessions, without the time
    spent compiling kernels inside steps, which ``compile_s`` counts (summed the same way)."""

    step: int = 0
    elapsed_s: float = 0.0
    last: dict[str, Any] | None = None
    compile_s: float = 0.0


class Trainer:
    """Runs ``cfg.train.n_steps`` optimisation steps of ``problem`` into ``run``, resumably."""

    def __init__(self, problem: Problem, cfg: RunConfig, run: RunDir, *, json_events: bool = False,
                 quiet: bool = False, save_optimizer: bool = True, live_view: Any = None) -> None:
        """``save_optimizer``: whether the final checkpoint carries the Adam state (the periodic and Ctrl-C ones
        always do, so a crash or an interruption resumes bit-exactly). ``live_view``: a
        :class:`~ngp_cli.viewer.live.LiveView` called between steps (``--viewer``); its seconds count as training
        time."""
        self.problem = problem
        self.cfg = cfg
        self.run = run
        self.json_events = json_events
        self.quiet = quiet
        self.save_optimizer = save_optimizer
        self.live_view = live_view
        self.show_psnr = getattr(problem, "progress_metric", "psnr") == "psnr"
        self.model = problem.model
        if any(p.device.type == "cpu" for p in self.model.parameters()):
            tune_cpu_allocator()  # x1.3 per step on CPU: recycle the encoder's large temporaries (see its docstring)
        if any(getattr(m, "kernel_target", None) == "cpu" for m in self.model.modules()):
            from ngp_cli.cuda.cpu_mlp import cpu_mlp_path

            cpu_mlp_path()  # the one-time choice of the CPU MLP path (up to ~1 s) now, not inside the first step
        self.optimizer = make_optimizer(self.model, cfg.optimizer)
        self.ema = EMA(list(self.model.parameters()), cfg.optimizer.ema_decay) if cfg.optimizer.ema_decay > 0 else None
        self.loss_fn = make_loss(cfg.loss)
        gen_device = getattr(problem, "generator_device", "cpu")
        # The shared draws (the occupancy-grid update) and, with one shard, the batches.
        self.generator = sampling_generator(cfg, gen_device)
        self.world = current_world()
        self.model_parallel = bool(getattr(problem, "model_parallel", False))
        # A model-parallel run's processes draw the same batches: one stream, as on one process.
        self.shards = 1 if self.model_parallel else resolve_shards(cfg.distributed.sampling_shards, self.world.size)
        if cfg.train.batch_size % self.shards:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} does not split into "
                              f"distributed.sampling_shards={self.shards} equal shards")
        self.shard_generators = {} if self.shards == 1 else shard_generators(cfg.seed, self.shards, self.world,
                                                                             gen_device)
        self.state = TrainState()
        self.divergence = DivergenceWatch()

    def restore(self, checkpoint: LoadedCheckpoint | None) -> bool:
        """Load ``checkpoint`` (the run's newest intact one, :meth:`RunDir.latest_checkpoint`; None: the run has none),
        and drop metric lines logged after it (all of them when there is none). Returns True when a checkpoint was
        loaded. Raises DataError (not this model's)."""
        if checkpoint is None:
            self.run.truncate_metrics(0)
            return False
        meta = checkpoint.meta  # validated by RunDir.load_checkpoint
        tensors = self.problem.local_tensors(checkpoint.tensors) if self.model_parallel else checkpoint.tensors
        _load_state(tensors, meta, self.model, self.optimizer, self.ema, self.generator)
        self._restore_shards(checkpoint.tensors, int(meta.get("sampling_shards", 1)))
        if hasattr(self.problem, "load_host_state"):
            self.problem.load_host_state(meta.get("problem"))
        self.state = TrainState(step=checkpoint.step, elapsed_s=float(meta.get("elapsed_s", 0.0)),
                                last=meta.get("last"), compile_s=float(meta.get("compile_s", 0.0)))
        if self.world.is_main:
            self.run.truncate_metrics(self.state.step)
        return True

    def _restore_shards(self, tensors: dict[str, torch.Tensor], saved_shards: int) -> None:
        """This process's shard generators from a checkpoint (``rng.shard.<k>``): a run resumed with the shards it
        was saved with (on any process count that divides them) continues their draws exactly; a different shard
        count starts the missing ones from their seeds (with a warning)."""
        missing = [k for k in self.shard_generators if f"rng.shard.{k}" not in tensors]
        for k, g in self.shard_generators.items():
            if f"rng.shard.{k}" in tensors:
                g.set_state(tensors[f"rng.shard.{k}"])
        if (missing or saved_shards != self.shards) and self.world.is_main:
            warn(f"the checkpoint was saved with {saved_shards} sampling shard(s), this run has {self.shards}: the "
                 "batches' random draws do not continue the saved ones exactly")

    def checkpoint(self, final: bool = False) -> str:
        """Write a checkpoint of the current state; the ``final`` one leaves out the Adam state when
        ``save_optimizer`` is off. Returns the weights' path. Raises OutputError, or DivergedError when a loss since
        the last check was non-finite (such weights are never saved)."""
        self._check_divergence()
        with_optimizer = self.save_optimizer or not final
        meta = {"elapsed_s": self.state.elapsed_s, "compile_s": self.state.compile_s, "last": self.state.last,
                "task": self.cfg.task, "ema_steps": self.ema.steps if self.ema else 0, "torch": torch.__version__,
                "optimizer_state": with_optimizer}
        if hasattr(self.problem, "host_state"):
            meta["problem"] = self.problem.host_state()
        if self.shards > 1:
            meta["sampling_shards"] = self.shards
        tensors = state_tensors(self.model, self.optimizer, self.ema, self.generator)
        if self.model_parallel:  # collectives: every process calls this at the same step
            tensors = self.problem.checkpoint_tensors(tensors)  # the whole model on rank 0, None elsewhere
        else:
            if self.world.distributed:
                local = set(getattr(self.problem, "replica_local", ()))
                check_replicas({k: v for k, v in tensors.items() if k.split(".", 1)[-1] not in local}, self.world,
                               self.state.step)
            # Every process's shard generators go into rank 0's checkpoint.
            shard_states = {k: g.get_state().cpu() for k, g in self.shard_generators.items()}
            for states in gather_objects(shard_states, self.world):
                tensors.update({f"rng.shard.{k}": v for k, v in states.items()})
        if not self.world.is_main:
            return str(self.run.path)
        if not with_optimizer:
            tensors = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
        path = self.run.save_checkpoint(self.state.step, tensors, meta, keep=self.cfg.train.keep_checkpoints)
        return str(path)

    def evaluation_weights(self):
        """Context manager giving the weights to evaluate with (the EMA when enabled)."""
        return self.ema.applied() if self.ema is not None else _nullcontext()

    def fit(self) -> TrainState:
        """Train from ``state.step`` to ``n_steps``. On Ctrl-C a checkpoint is written, then Interrupted is raised;
        a non-finite loss raises DivergedError (no checkpoint of the diverged weights is written)."""
        tc = self.cfg.train
        progress = _Progress(tc.n_steps, self.state.step, self.quiet or not self.world.is_main, self.show_psnr)
        window_t0, window_steps = time.perf_counter(), 0
        try:
            with _deferred_sigint() as stop_requested:
                self._loop(progress, window_t0, window_steps, stop_requested)
        except KeyboardInterrupt:
            progress.close()
            path = self.checkpoint()
            if self.world.is_main:
                print(file=sys.stderr)
            raise Interrupted(f"stopped at step {self.state.step}; checkpoint {path}; continue with "
                              f"--resume {self.run.path}") from None
        progress.close()
        self.checkpoint(final=True)
        return self.state

    def _loop(self, progress: _Progress, window_t0: float, window_steps: int,
              stop_requested: Callable[[], bool]) -> None:
        """The steps. Nothing here waits for the device except on log steps (and before checkpoints and
        evaluations), where the loss, the batch mse and the divergence watch are read back in one transfer."""
        tc = self.cfg.train
        before_step = getattr(self.problem, "before_step", None)
        log_metrics = getattr(self.problem, "log_metrics", None)
        time_up = bool(tc.max_time_s and self.state.elapsed_s >= tc.max_time_s)
        while self.state.step < tc.n_steps and not time_up:
            t0 = time.perf_counter()
            lr = learning_rate(self.cfg.optimizer, self.state.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            compiled0 = runtime.compile_seconds()  # the first step on a kernel backend compiles
            if before_step is not None:
                before_step(self.state.step, self.generator)
            batch_generators = self.generator if self.shards == 1 else self.shard_generators
            loss, mse = train_step(self.problem, self.optimizer, self.loss_fn, batch_generators, tc.batch_size,
                                   shards=self.shards, world=self.world)
            self.state.step += 1
            self.divergence.observe(loss, self.state.step)
            if self.ema is not None:
                self.ema.update()
            record = None
            log_step = self.state.step % tc.log_every == 0 or self.state.step == tc.n_steps
            if log_step:  # read back before the step's time is taken: on a GPU, waiting for it is the step's work
                loss_value, mse_value = self._read_back(loss, mse)
                extra = log_metrics() if log_metrics is not None else {}
            compiling = min(max(runtime.compile_seconds() - compiled0, 0.0), time.perf_counter() - t0)
            self.state.compile_s += compiling
            self.state.elapsed_s += time.perf_counter() - t0 - compiling
            window_t0 += compiling  # compilation is not part of the training rate either
            window_steps += 1
            if log_step:
                now = time.perf_counter()
                steps_per_s = window_steps / max(now - window_t0, 1e-9)
                psnr = mse_to_psnr(mse_value)
                # "psnr" stays for compatibility (it always was the batch's); "batch_psnr" only where it means something
                record = {"step": self.state.step, "loss": loss_value, "psnr": psnr,
                          **({"batch_psnr": psnr} if self.show_psnr else {}),
                          "samples_per_s": steps_per_s * tc.batch_size, "steps_per_s": steps_per_s,
                          "elapsed_s": round(self.state.elapsed_s, 4), "compile_s": round(self.state.compile_s, 4),
                          "lr": lr, **extra}
                if self.world.distributed:  # rank 0's time in the gradient all-reduce, this session
                    record["comm_s"] = round(comm_seconds(), 4)
                self.state.last = record
                if self.world.is_main:
                    self.run.append_metrics(record)
                    if self.json_events:
                        emit("step", **record)
                window_t0, window_steps = now, 0
            progress.advance(self.state.step, record)
            if self.live_view is not None:
                self.state.elapsed_s += self.live_view.between_steps(record, self.state.elapsed_s)
            if tc.eval_every and self.state.step % tc.eval_every == 0 and hasattr(self.problem, "evaluate_held_out"):
                self._check_divergence()
                self._evaluate_held_out()
                window_t0 = time.perf_counter()  # the evaluation is not part of the training rate
            if tc.checkpoint_every and self.state.step % tc.checkpoint_every == 0 and self.state.step != tc.n_steps:
                self.checkpoint()
            stop = stop_requested()
            time_up = bool(tc.max_time_s and self.state.elapsed_s >= tc.max_time_s)
            if self.world.distributed:  # every process must stop at the same step (the next ones are collectives)
                stop, time_up = (bool(v > 0) for v in all_reduce_sum(
                    torch.tensor([float(stop), float(time_up)], dtype=torch.float64), self.world).tolist())
            if stop:
                raise KeyboardInterrupt

    def _read_back(self, loss: torch.Tensor, mse: torch.Tensor | float) -> tuple[float, float]:
        """Loss and mse as floats, read with the divergence watch in one device transfer (the log step's only
        synchronisation). Raises DivergedError for a non-finite loss at or before this step."""
        mse_t = mse.detach() if isinstance(mse, torch.Tensor) else torch.tensor(float(mse))
        values = torch.stack([loss.double(), mse_t.to(loss.device, torch.float64), *self.divergence.values()])
        loss_value, mse_value, *watch = values.tolist()
        if watch:
            self.divergence.check(*watch)
        return loss_value, mse_value

    def _check_divergence(self) -> None:
        """Raise DivergedError when a loss so far was non-finite (reads the watch back: a synchronisation)."""
        values = self.divergence.values()
        if values:
            self.divergence.check(*torch.stack(values).tolist())

    def _evaluate_held_out(self) -> None:
        # Rank 0 evaluates (the others wait for it in the next step's all-reduce); every process of a model-parallel
        # run renders its part.
        if not self.world.is_main and not self.model_parallel:
            return
        with self.evaluation_weights():
            metrics = self.problem.evaluate_held_out()
        if not self.world.is_main:
            return
        record = {"step": self.state.step, "elapsed_s": round(self.state.elapsed_s, 4), "eval": metrics}
        self.run.append_metrics(record)
        if self.json_events:
            emit("eval", **record)
        info(f"step {self.state.step}: held-out " + "  ".join(
            f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))))


@contextmanager
def _nullcontext() -> Iterator[None]:
    yield


@contextmanager
def _deferred_sigint() -> Iterator[Callable[[], bool]]:
    """Turn the first Ctrl-C into a flag checked between steps, so a checkpoint never holds a half-applied step.
    A second Ctrl-C interrupts at once. Outside the main thread (no signal handlers possible) it does nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    requested = []

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGINT, previous)
