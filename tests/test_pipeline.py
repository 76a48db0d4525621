"""A task plugin written against the one training pipeline (ngp_cli.pipeline): its declaration below is all a task
trained by Trainer needs; the command, the run directory, resume and the summary come from the pipeline."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import typer
from typer.testing import CliRunner

from ngp_cli.config import RunConfig, opt, section
from ngp_cli.console import emit
from ngp_cli.pipeline import load_trained
from ngp_cli.run_commands import add_run_commands
from ngp_cli.tasks import RunCommand, Shorthand, Task, TrainInput


# --- the plugin (the "under 50 lines") -------------------------------------------------------------------
@dataclass
class LineSection:
    path: str = opt("", "a text file 'a b': fit y = a x + b")
    scale: float = opt(1.0, "multiplies the target", gt=0.0)


@dataclass
class LineConfig(RunConfig):
    line: LineSection = section(LineSection, "line task")


class LineProblem:
    def __init__(self, coefficients: list[float], cfg: LineConfig) -> None:
        self.a, self.b = (c * cfg.line.scale for c in coefficients)
        self.model = torch.nn.Linear(1, 1)

    def batch_loss(self, batch_size, generator, loss_fn):
        x = torch.rand(batch_size, 1, generator=generator)
        pred = self.model(x)
        loss = loss_fn(pred, self.a * x + self.b)
        return loss, loss.detach()


def eval_line(task, run, *, x, backend, data):  # ngp eval RUN --x X: the trained line at x
    _, problem, meta = load_trained(task, run, backend, data)
    emit("done", step=meta["step"], metrics={"y": problem.model(torch.tensor([[x]])).item()})


class LineTask(Task):
    name, summary, commands, default_preset = "line", "Fit a line", ("train-line",), "defaults"
    train_command, train_help = "train-line", "Fit y = a x + b."
    train_input = TrainInput("coefficients", "line.path", help="A text file 'a b'.")
    shorthands = (Shorthand("--scale", "line.scale", "Scale the target.", float, min=0.0),)
    run_commands = (RunCommand("eval", eval_line, "y at x.", (("x", Annotated[float, typer.Option("--x")], 0.0),)),)

    def config_class(self):
        return LineConfig

    def load_input(self, cfg, fresh):
        return [float(v) for v in Path(cfg.line.path).read_text().split()]

    def build_problem(self, cfg, backend, data):
        return LineProblem(data, cfg)

    def evaluate(self, problem, run, state):
        return {"a": problem.model.weight.item(), "b": problem.model.bias.item()}, {}
# -------------------------------------------------------------------------------------------------------------------


def _ngp(*args: str):
    app, task = typer.Typer(), LineTask()
    task.register(app)
    add_run_commands(app, {task.name: task})
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def _train(tmp_path: Path, *args: str):
    return _ngp("train-line", *args, "--runs-dir", str(tmp_path / "runs"), "--json")


def test_a_plugin_trains_evaluates_and_resumes_through_the_pipeline(tmp_path):
    data = tmp_path / "line.txt"
    data.write_text("2 -1")
    sets = ["--set", "optimizer.learning_rate=0.05", "--set", "train.batch_size=256", "--set", "optimizer.l2_reg=0"]
    done = _train(tmp_path, str(data), "--steps", "150", "--scale", "0.5", *sets)[-1]
    assert done["event"] == "done" and done["step"] == 150
    run = Path(done["run_dir"])
    assert run.parent.name == "line" and run.name.endswith("-line")  # runs/<task>/<time>-<input stem>
    assert (run / "config.yaml").read_text().count(f"path: {data.resolve()}") == 1  # recorded absolute
    assert "scale: 0.5" in (run / "config.yaml").read_text()  # the shorthand is a --set
    assert abs(done["metrics"]["a"] - 1.0) < 0.1 and abs(done["metrics"]["b"] + 0.5) < 0.1
    assert Path(done["artifacts"]["checkpoint"]).is_file() and done["metrics"]["steps"] == 150
    resumed = _train(tmp_path, "--resume", str(run), "--steps", "200")[-1]
    assert resumed["run_dir"] == str(run) and resumed["step"] == 200
    assert abs(resumed["metrics"]["a"] - 1.0) < 0.05
    # a command on the trained run, with the task's own option: the newest checkpoint (step 200) at x = 2
    evaluated = _ngp("eval", run, "--x", "2", "--backend", "torch")[-1]
    assert evaluated["step"] == 200 and abs(evaluated["metrics"]["y"] - 1.5) < 0.1
