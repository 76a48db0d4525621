"""The one training pipeline of every task that trains with :class:`~ngp_cli.train.Trainer` (issue 15).

A task declares its training command (nerfstudio's method-spec idea): its name and help, its one positional input
(:class:`ngp_cli.tasks.TrainInput`, the config key it is recorded in and resumed from) and its shorthand options
(:class:`ngp_cli.tasks.Shorthand`, each a ``--set``), plus typed hooks on the task (:class:`ngp_cli.tasks.Task`): ``load_input``,
``build_problem``, ``describe``, ``before_fit``, ``evaluate`` and ``result_line``. From that, :func:`register`
builds the typer command (the shared options of :mod:`ngp_cli.commands` and the task's own) and :func:`train` runs
the flow every task shares::

    prepare (config, backend; --resume checks) -> the input (new: record it; resumed: check it is unchanged)
    -> load_input -> build_problem -> the run directory (new runs) -> Trainer -> restore -> before_fit -> fit
    -> evaluate (with the EMA weights) -> summary.json and the done line

Imports no torch at module level (``ngp --help`` builds every command from here).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ngp_cli.commands import (
    AllowInputChangeOpt,
    BackendOpt,
    JsonOpt,
    NameOpt,
    NprocOpt,
    PresetOpt,
    ResumeOpt,
    RunsDirOpt,
    SaveOptimizerOpt,
    SetOpt,
    StepsOpt,
    TrainOptions,
    ViewerHostOpt,
    ViewerOpt,
    ViewerPortOpt,
    ViewerShareOpt,
    create_run,
    finish,
    open_run,
    prepare,
    relocated_input,
    restore,
    resumed_input,
)
from ngp_cli.config import config_value, set_config_value
from ngp_cli.console import info, is_quiet
from ngp_cli.errors import UsageError
from ngp_cli.viewer.live import DEFAULT_SHARE
from ngp_cli.viewer.server import DEFAULT_HOST, DEFAULT_PORT

if TYPE_CHECKING:
    from ngp_cli.runs import RunDir
    from ngp_cli.tasks import Task, TrainInput
    from ngp_cli.train import TrainState

__all__ = ["load_trained", "register", "run_name", "train"]


# The options every training command shares (ngp_cli.commands), in --help order: (parameter, annotation, default).
_SHARED = (("preset", PresetOpt, None), ("set_", SetOpt, None), ("runs_dir", RunsDirOpt, Path("runs")),
           ("name", NameOpt, None), ("resume", ResumeOpt, None), ("json_events", JsonOpt, False),
           ("backend", BackendOpt, None), ("steps", StepsOpt, None), ("allow_input_change", AllowInputChangeOpt, False),
           ("save_optimizer", SaveOptimizerOpt, True), ("nproc", NprocOpt, 1), ("viewer", ViewerOpt, False),
           ("viewer_share", ViewerShareOpt, DEFAULT_SHARE), ("viewer_host", ViewerHostOpt, DEFAULT_HOST),
           ("viewer_port", ViewerPortOpt, DEFAULT_PORT))


def register(task: Task, app: typer.Typer) -> None:
    """Add ``task``'s training command (``task.train_command``) to ``app``: the positional input, the shared options
    and the task's shorthands; its body is :func:`train`."""
    spec: TrainInput = task.train_input
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(spec.name, kind, default=None, annotation=Annotated[Path | None, typer.Argument(
        help=spec.help, show_default=False)])]
    params += [inspect.Parameter(name, kind, default=default, annotation=annotation)
               for name, annotation, default in _SHARED]
    params += [inspect.Parameter(s.parameter, kind, default=False if s.type is bool else None,
                                 annotation=s.annotation()) for s in task.shorthands]

    def command(**kwargs: Any) -> None:
        from ngp_cli.launch import relaunched

        if relaunched(kwargs["nproc"]):
            return
        sets = list(kwargs["set_"] or [])
        sets += [a for s in task.shorthands if (a := s.assignment(kwargs[s.parameter])) is not None]
        opts = TrainOptions(preset=kwargs["preset"], sets=sets, runs_dir=kwargs["runs_dir"], name=kwargs["name"],
                            resume=kwargs["resume"], json=kwargs["json_events"], backend=kwargs["backend"],
                            steps=kwargs["steps"], allow_input_change=kwargs["allow_input_change"],
                            save_optimizer=kwargs["save_optimizer"], viewer=kwargs["viewer"],
                            viewer_share=kwargs["viewer_share"], viewer_host=kwargs["viewer_host"],
                            viewer_port=kwargs["viewer_port"])
        train(task, opts, kwargs[spec.name])

    command.__signature__ = inspect.Signature(params)  # what typer reads the options from
    command.__doc__ = task.train_help
    command.__name__ = task.train_command.replace("-", "_")
    app.command(task.train_command)(command)


def run_name(path: Path) -> str:
    """A new run's default name: the input file's stem, or the input folder's name."""
    return path.stem if path.is_file() else path.name


def train(task: Task, opts: TrainOptions, given: Path | None) -> None:
    """The training command body of every :class:`~ngp_cli.train.Trainer` task (see the module docstring).

    Raises NgpError subclasses on bad input (UsageError without an input where the task has no default); nothing is
    created on disk before the config, the input and the problem were built.
    """
    from ngp_cli.distributed import (
        broadcast_object,
        join_run,
        leave_quietly,
        pin_local_gpu,
        resolve_shards,
        shutdown_world,
    )
    from ngp_cli.runs import RunDir
    from ngp_cli.train import Trainer

    pin_local_gpu()
    if opts.viewer:  # refused before anything is built
        from ngp_cli.viewer import require_viser
        from ngp_cli.viewer.live import check_share

        require_viser()
        check_share(opts.viewer_share)
        if task.live_viewer is None:
            raise UsageError(f"--viewer is not available for {task.name} runs yet (NeRF runs have it)")
    prep = prepare(task, opts)
    cfg = prep.cfg
    world = join_run(cfg, prep.backend, partitioned=task.partitioned)  # rank 0 alone prints and writes
    if prep.run is None:  # a new run records its sampling shards, so a resume on other process counts keeps them
        # (a spatially partitioned run's processes all draw the one stream)
        set_config_value(cfg, "distributed.sampling_shards", 1 if cfg.distributed.partition > 1 else
                         resolve_shards(cfg.distributed.sampling_shards, world.size))
    spec: TrainInput = task.train_input
    if prep.run is None:
        if given is None and spec.default is None:
            raise UsageError(f"give the {spec.name} to train on")
        path = (given if given is not None else spec.default()).expanduser().resolve()
        set_config_value(cfg, spec.key, str(path))
    else:
        path = resumed_input(prep, given, config_value(cfg, spec.key), spec.key, spec.name)
    data = task.load_input(cfg, prep.run is None)
    problem = task.build_problem(cfg, prep.backend, data)
    if prep.run is not None:
        run = prep.run
    else:
        run = create_run(task, opts, cfg, default_name=run_name(path)) if world.is_main else None
        run = RunDir(broadcast_object(str(run.path) if run is not None else None, world))
    n_params = sum(p.numel() for p in problem.model.parameters())
    info(f"{task.describe(cfg, data, problem)}; backend {prep.backend.name} on {prep.backend.device}; "
         f"{n_params:,} parameters")
    live = _live_view(task, opts, problem, run, prep.backend) if opts.viewer and world.is_main else None
    trainer = Trainer(problem, cfg, run, json_events=opts.json, quiet=is_quiet(), save_optimizer=opts.save_optimizer,
                      live_view=live)
    restored = restore(trainer, prep) if world.is_main else trainer.restore(prep.checkpoint)
    task.before_fit(problem, trainer, restored)
    try:
        state = trainer.fit()
    finally:
        if live is not None:
            live.close()
    if not world.is_main and not task.parallel_evaluation:  # the final evaluation and the summary are rank 0's
        leave_quietly()
    with trainer.evaluation_weights():
        metrics, artifacts = task.evaluate(problem, run, state)
    if not world.is_main:  # it took its share of the evaluation; rank 0 writes
        leave_quietly()
    metrics = {**metrics, **_training_metrics(state)}
    if live is not None:  # the viewer's share of the training time (--viewer)
        metrics["viewer_s"] = round(live.spent, 3)
        metrics["viewer_contended_s"] = round(live.contended, 3)  # lost to a browser beside a CPU training
    if world.distributed:
        metrics["processes"] = world.size
    artifacts["checkpoint"] = run.latest_weights()
    info(task.result_line(cfg, metrics, artifacts, state))
    finish(run, state.step, metrics, artifacts)
    shutdown_world()


def _live_view(task: Task, opts: TrainOptions, problem: Any, run: RunDir, backend: Any) -> Any:
    """Start the viewer of ``--viewer`` (:mod:`ngp_cli.viewer.live`) and say where it is."""
    import torch

    from ngp_cli.viewer.live import LiveView
    from ngp_cli.viewer.server import announce, start_server

    server = start_server(opts.viewer_host, opts.viewer_port)
    cpu_threads = torch.get_num_threads() if backend.device.type == "cpu" else None
    live = LiveView(task.live_viewer(server, problem, run.path), server, opts.viewer_share, cpu_threads)
    announce(server, run.path, "viewer", f" (frames, and a browser beside a CPU training, take at most "
                                         f"{opts.viewer_share:.0%} of the training time)")
    return live


def _training_metrics(state: TrainState) -> dict[str, Any]:
    return {"loss": (state.last or {}).get("loss"), "steps": state.step, "train_s": round(state.elapsed_s, 3),
            "compile_s": round(state.compile_s, 3)}


def load_trained(task: Task, run_path: Path, backend: str | None,
                 data: Path | None = None) -> tuple[RunDir, Any, dict[str, Any]]:
    """Rebuild a trained run of ``task`` for a command on it (``ngp eval RUN`` ...): its config with ``backend``
    (``--backend``) applied, its input (``data``, ``--data``, replaces the recorded path: :func:`relocated_input`),
    the problem, and the newest checkpoint's weights, the EMA when the run kept one.

    Returns ``(run, problem, checkpoint meta)``; ``meta["step"]`` is the step trained. Raises DataError (not a run of
    ``task``, no checkpoint, the input gone), ConfigError, NoGPUError.
    """
    from ngp_cli.train import load_trained_weights

    run, cfg, prepared = open_run(task, run_path, backend)
    relocated_input(cfg, task.train_input.key, data, f"input {task.train_input.name}")
    problem = task.build_problem(cfg, prepared, task.load_input(cfg, False))
    return run, problem, load_trained_weights(run, problem.model, cfg)
