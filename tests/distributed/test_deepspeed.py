"""DeepSpeed for real: `accelerate launch --config_file configs/accelerate/deepspeed-zero2.yaml` (or -zero3.yaml),
the shipped launch configs, start two CPU processes (DeepSpeed's CPU accelerator over gloo) on a tiny random
model, with the training YAML of one process.

- `rlaif sft`, `rlaif rm` and `rlaif dpo` under ZeRO-2 / ZeRO-3 log the figures of the same run in one process and
  end with its weights; each process holds less of the trained state; the checkpoint holds the whole model and
  every parameter's AdamW moments keyed by name; for sft, a rerun from the step-4 checkpoint ends where the run
  ended, and a 1-process checkpoint resumes under DeepSpeed (and the other way round).
- ppo and grpo under ZeRO-2 and ZeRO-3: tests/distributed/test_data_parallel.py (against their plain 2-process
  runs).
- A DeepSpeed launch with a sharding key of rlaif's own, with ZeRO stage 1 or with a DeepSpeed JSON of the user's
  exits 2 naming what, before anything is written; LoRA under ZeRO-3 exits 2 naming the key.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from rlaif.checkpoint import list_checkpoints
from rlaif.metrics import read_metrics

from .test_data_parallel import _cli, _stage_args, launch

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def _run(stage: str, out: Path, args: list[str], processes: int, tmp_path: Path, zero: int | None = None,
         offload: bool = False):
    config = CONFIGS / f"deepspeed-zero{zero}.yaml" if zero else CONFIGS / "multi-gpu.yaml"
    proc = launch(["-m", "rlaif.cli", stage, f"run.output_dir={out}", "run.progress=false", "run.device=cpu",
                   "run.keep_checkpoints=2", *args], processes, tmp_path, config=config,
                  extra=["--offload_optimizer_device", "cpu"] if offload else [])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _weights(out: Path, folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / folder / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _from_step_4(run: Path, to: Path, folder: str) -> Path:
    """A copy of `run` as it was after step 4: its last checkpoint and final model removed."""
    shutil.copytree(run, to)
    shutil.rmtree(to / folder)
    shutil.rmtree(dict(list_checkpoints(to))[6])
    return to


_ONE_PROCESS_RUNS: dict[str, Path] = {}  # stage -> its 1-process run (the same arguments in every case)


# rm reaches DeepSpeed through the same calls as sft and dpo (stages/training_loop.py)
@pytest.mark.parametrize(("stage", "zero", "offload"), [("sft", 2, True), ("sft", 3, False), ("dpo", 3, False)])
def test_deepspeed_training_equals_one_process_and_resumes(stage, zero, offload, tiny_model_dir, tmp_path):
    """11 rows, 2 held out, 4 per step as 4 micro-batches of 1 (2 per process), 6 steps: each epoch ends with a
    1-row step, where one process runs a zero-weight pass to keep DeepSpeed's per-backward reductions in step.
    `offload`: the accelerate flag --offload_optimizer_device cpu (DeepSpeed's optimizer offload code path)."""
    args, folder, keys = _stage_args(stage, tiny_model_dir, tmp_path)
    args += [f"{stage}.micro_batch_size=1", f"{stage}.gradient_accumulation_steps=4"]  # the same 4 rows a step:
    # two backward passes per process (one in an epoch's last step)
    one, ds = _ONE_PROCESS_RUNS.get(stage, tmp_path / "one"), tmp_path / "ds"
    if stage not in _ONE_PROCESS_RUNS:
        _run(stage, one, args, 1, tmp_path)
        _ONE_PROCESS_RUNS[stage] = one
    proc = _run(stage, ds, args, 2, tmp_path, zero, offload)
    assert f"DeepSpeed ZeRO stage {zero} over 2 processes (optimizer offload: {'cpu' if offload else 'none'}" \
        in proc.stderr

    rows1, rows2 = read_metrics(one), read_metrics(ds)
    assert [r["step"] for r in rows1] == [r["step"] for r in rows2] == list(range(7))
    for a, b in zip(rows1, rows2):
        for key in keys:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    # each process holds part of the AdamW state (and under ZeRO-3 of the weights): less than the whole
    assert rows2[1]["trained_state_gib"] < rows1[1]["trained_state_gib"]
    assert _max_diff(_weights(one, folder), _weights(ds, folder)) < 1e-4

    # the checkpoint: the whole model and every trained parameter's moments, keyed by name, step 6
    (_, ckpt4), (_, ckpt6) = list_checkpoints(ds)
    opt_state = torch.load(ckpt6 / "optimizer.pt", weights_only=False)
    names = [n for g in opt_state["param_groups"] for n in g["params"]]
    assert names and set(opt_state["state"]) == set(names) and all(isinstance(n, str) for n in names)
    assert all({"exp_avg", "exp_avg_sq"} <= set(st) and float(st["step"]) == 6 for st in opt_state["state"].values())
    assert any(float(st["exp_avg"].abs().max()) > 0 for st in opt_state["state"].values())
    saved = _weights(ckpt6, "model")
    assert _max_diff(saved, {k: v for k, v in _weights(ds, folder).items() if k in saved}) == 0

    if stage != "sft":  # resuming is the same code in rm and dpo (training_loop.restore_trainer_state)
        return
    # a rerun from step 4 under DeepSpeed: moments, RNG and data position restored, the same end
    resumed = _from_step_4(ds, tmp_path / "resumed", folder)
    proc = _run(stage, resumed, args, 2, tmp_path, zero, offload)
    assert "resumed from" in proc.stderr
    assert _max_diff(_weights(ds, folder), _weights(resumed, folder)) < 1e-6
    if stage == "sft" and zero == 3:  # a 1-process checkpoint resumes under DeepSpeed, and the other way round
        into_ds = _run(stage, _from_step_4(one, tmp_path / "into-ds", folder), args, 2, tmp_path, zero)
        into_one = _run(stage, _from_step_4(ds, tmp_path / "into-one", folder), args, 1, tmp_path)
        assert "resumed from" in into_ds.stderr and "resumed from" in into_one.stderr
        assert _max_diff(_weights(one, folder), _weights(tmp_path / "into-ds", folder)) < 1e-6
        assert _max_diff(_weights(ds, folder), _weights(tmp_path / "into-one", folder)) < 1e-6


def test_deepspeed_launches_rlaif_does_not_run_exit_2(tiny_model_dir, prompts_file, tmp_path):
    def refused(args: list[str], message: str, out: Path | None, **how) -> None:
        proc = launch(args, 2, tmp_path, **how)
        assert proc.returncode != 0
        assert proc.stderr.count(message) >= 1, proc.stderr[-3000:]  # each process checks; the launcher may stop one first
        assert "exitcode  : 2" in proc.stderr
        assert out is None or not out.exists()  # refused before anything is written

    zero2 = {"config": CONFIGS / "deepspeed-zero2.yaml"}
    refused(_cli("grpo", tmp_path / "grpo", tiny_model_dir, [f"grpo.prompts={prompts_file}", "grpo.lora.r=4"]),
            "config key 'grpo.lora.r': not with DeepSpeed ZeRO-3", None, config=CONFIGS / "deepspeed-zero3.yaml")
    args, _, _ = _stage_args("sft", tiny_model_dir, tmp_path)
    out = tmp_path / "sft"
    sft = ["-m", "rlaif.cli", "sft", f"run.output_dir={out}", "run.progress=false", "run.device=cpu", *args]
    refused([*sft, "run.fsdp=true"], "config key 'run.fsdp': the DeepSpeed launch already shards (ZeRO-2)", out,
            **zero2)
    refused(sft, "DeepSpeed zero_stage 1: rlaif runs ZeRO stage 2 or 3", out,
            mode="--use_deepspeed", extra=["--zero_stage", "1"])
    ds_json = tmp_path / "ds.json"
    ds_json.write_text('{"zero_optimization": {"stage": 2}}')
    refused(sft, f"deepspeed_config_file {ds_json} is not read", out,
            mode="--use_deepspeed", extra=["--deepspeed_config_file", str(ds_json)])
