"""Training started by `accelerate launch`: one process per GPU, DeepSpeed ZeRO-3 across them.

The step that trains (``pipeline.fine_tune``) writes a job folder: the configuration, the
packed rows and where the base is. It then runs

    accelerate launch --config_file accelerate_zero3.yaml --num_processes <gpus> \\
        -m datacreek_assets.finetune.launch <job folder>

and follows the run from outside. Each launched process loads the base, wraps the same LoRA
and runs ``training.train_lora`` with its ``accelerator``. The first process appends every
optimizer step to ``progress.jsonl``. The step reads that file and calls its ``on_step`` (the
credit meter, the heartbeat). When ``on_step`` raises, the step writes ``stop``. Every process
reads ``stop`` at the next step boundary, checkpoints and exits with ``STOPPED``; the step then
raises what ``on_step`` raised. A killed launch resumes from its newest checkpoint, like a
training in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from datacreek_assets.finetune.packing import PackedRow
from datacreek_assets.finetune.training import (
    STEP_OBSERVER, DevicePlan, TrainConfig, TrainResult, precision_of, train_lora, wrap_lora,
)

STOPPED = 75  # the exit code of a launch stopped through its stop file (EX_TEMPFAIL)
LOG_TAIL = 4000


class LaunchFailed(RuntimeError):
    pass


class StopRequested(Exception):
    pass


def write_job(job_dir: Path, base_dir: Path, out_dir: Path, config: TrainConfig, pad_id: int,
              train_rows: list[PackedRow], val_rows: list[PackedRow], threads: int) -> None:
    job_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("stop", "progress.jsonl", "result.json"):  # a resumed launch starts a new record
        (job_dir / stale).unlink(missing_ok=True)
    (job_dir / "rows.json").write_text(json.dumps({"train": [asdict(r) for r in train_rows],
                                                   "validation": [asdict(r) for r in val_rows]}))
    (job_dir / "job.json").write_text(json.dumps({
        "base_dir": str(base_dir), "out_dir": str(out_dir), "config": asdict(config), "pad_id": pad_id,
        "threads": threads}))


def launch_command(plan: DevicePlan, config: TrainConfig, job_dir: Path) -> list[str]:
    if not plan.accelerate_config:
        raise ValueError(f"this plan trains in its own process: {plan.reason}")
    precision = "bf16" if precision_of(plan.device, False, config) == "bf16" else "no"  # CPU autocast too
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", plan.accelerate_config,
               "--num_processes", str(plan.processes), "--num_machines", "1", "--mixed_precision", precision]
    if plan.processes > 1 or plan.device == "cuda":
        command += ["--main_process_port", str(_free_port())]
    return command + ["-m", "datacreek_assets.finetune.launch", str(job_dir)]


def run_launched(plan: DevicePlan, config: TrainConfig, job_dir: Path,
                 on_step: Callable[[int, float], None] | None = None, poll_s: float = 0.5) -> TrainResult:
    """Run the job under `accelerate launch` and follow it; the launch's output goes to job_dir/launch.log."""
    import datacreek_assets

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(datacreek_assets.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    threads = json.loads((job_dir / "job.json").read_text())["threads"]
    env["OMP_NUM_THREADS"] = str(threads)
    log = job_dir / "launch.log"
    try:
        code = _follow(plan, config, job_dir, env, log, on_step, poll_s)
    finally:
        (job_dir / "rows.json").unlink(missing_ok=True)  # the tenant's tokenized records: kept no longer than needed
    if code != 0:
        raise LaunchFailed(f"`accelerate launch` exited with {code}; the end of {log}:\n{_tail(log)}")
    result = json.loads((job_dir / "result.json").read_text())
    for history in ("losses", "val_losses"):  # JSON has no tuples
        result[history] = [tuple(point) for point in result[history]]
    for probe in ("probe_mb", "probe_tokens_per_s"):  # JSON keys are strings
        result[probe] = {int(m): value for m, value in result[probe].items()}
    return TrainResult(**result)


def _follow(plan: DevicePlan, config: TrainConfig, job_dir: Path, env: dict, log: Path,
            on_step: Callable[[int, float], None] | None, poll_s: float) -> int:
    """Start the launch, report its steps as they come, and return its exit code."""
    seen = 0
    with log.open("ab") as out:
        process = subprocess.Popen(launch_command(plan, config, job_dir), stdout=out, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
        try:
            while True:
                code = process.poll()
                for step, total, loss in _progress(job_dir)[seen:]:
                    seen += 1
                    if (observer := STEP_OBSERVER.get()) is not None:  # the CLI's progress bar
                        observer(step, total, loss)
                    if on_step is not None:
                        on_step(step, loss)
                if code is not None:
                    break
                time.sleep(poll_s)
        except BaseException:
            _stop(process, job_dir)
            raise
    return code


def _stop(process: subprocess.Popen, job_dir: Path, grace_s: float = 120.0) -> None:
    """Ask the launch to checkpoint and stop at its next step boundary; kill it if it does not.
    The kill reaches every descendant: torch elastic starts each worker in a session of its own,
    so killing the launcher's process group would leave the workers training on the GPUs."""
    import psutil

    (job_dir / "stop").touch()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for member in tree:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        process.wait()
        psutil.wait_procs(tree, timeout=30)


def _progress(job_dir: Path) -> list[tuple[int, int, float]]:
    path = job_dir / "progress.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    complete = text[:text.rfind("\n") + 1]  # a last line still being written waits for the next read
    return [(row["step"], row["total"], row["loss"]) for row in map(json.loads, complete.splitlines())]


def _tail(path: Path) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as log:
        log.seek(max(0, path.stat().st_size - LOG_TAIL))
        return log.read().decode(errors="replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rows(payload: list[dict]) -> list[PackedRow]:
    return [PackedRow(**row) for row in payload]


def main(argv: list[str] | None = None) -> int:
    """One launched process: train the job's adapter with this process's share of every step."""
    parser = argparse.ArgumentParser(prog="python -m datacreek_assets.finetune.launch",
                                     description="One process of a training started by `accelerate launch` "
                                                 "(pipeline.fine_tune starts it; not a command for people).")
    parser.add_argument("job_dir", type=Path)
    job_dir = parser.parse_args(argv).job_dir
    import torch
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    from datacreek_assets.finetune.base_model import load_base

    job = json.loads((job_dir / "job.json").read_text())
    config = TrainConfig(**{**job["config"], "target_modules": tuple(job["config"]["target_modules"])})
    torch.set_num_threads(job["threads"])
    # the base is loaded before the Accelerator exists: under DeepSpeed ZeRO-3 it installs a config that
    # makes from_pretrained partition the weights as they load, and the loop measures its micro-batch
    # on the whole model before prepare() partitions it
    model, _ = load_base(Path(job["base_dir"]))
    accelerator = Accelerator()
    rows = json.loads((job_dir / "rows.json").read_text())
    torch.manual_seed(config.seed)  # as fine_tune does: the same LoRA initialisation in every process
    peft_model = wrap_lora(model, config)

    def report(step: int, total: int, loss: float) -> None:
        if accelerator.is_main_process:
            with (job_dir / "progress.jsonl").open("a") as progress:
                progress.write(json.dumps({"step": step, "total": total, "loss": loss}) + "\n")

    def on_step(step: int, loss: float) -> None:
        stop = accelerator.is_main_process and (job_dir / "stop").exists()
        if broadcast_object_list([stop])[0]:  # every process stops at the same step
            raise StopRequested(step)

    STEP_OBSERVER.set(report)

    try:
        result = train_lora(peft_model, job["pad_id"], _rows(rows["train"]), _rows(rows["validation"]), config,
                            Path(job["out_dir"]), accelerator.device.type, on_step=on_step, accelerator=accelerator)
    except StopRequested as stop:
        print(f"stopped after step {stop} at the step's request; the checkpoint is written", file=sys.stderr)
        accelerator.end_training()
        return STOPPED
    if accelerator.is_main_process:
        tmp = job_dir / ".result.json"
        tmp.write_text(json.dumps(asdict(result)))
        os.replace(tmp, job_dir / "result.json")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
