"""`rlaif pipeline CONFIG` and `rlaif demo`: sft -> audit -> label -> rm -> align -> eval -> report from one YAML.

`align` trains the policy with `pipeline.algorithm` (ppo | dpo | grpo). Each stage runs in
`<run.output_dir>/<folder>/` and its output feeds the next:

    critique/critique.jsonl -> sft.data (Constitutional AI: SFT on the revised answers; only with `critique`)
    sft/model               -> label.policy, <algorithm>.policy, eval.baseline   (without sft: sft.model itself)
    audit/audit.json        (the label judge measured on the gold set; shown in the report)
                            -> label.judge.panel_audit (a panel weighted by its members' audit accuracy)
    label/preferences.jsonl -> rm.data, dpo.data
    rm/model                -> ppo.reward.model, grpo.reward.model, eval.reward_models
    eval.judge              -> ppo.validation.judge, grpo.validation.judge (the held-out signal in training)
    <algorithm>/policy      -> eval.policy         (folders ppo/, dpo/ or grpo/)
    eval/eval.json          -> report.html + summary.json at the top of the run folder
                               (eval-dpo/, eval-grpo/ for the other algorithms, so all three can sit side by side)

`pipeline.rounds: N` adds N-1 rounds of on-policy labels -> rm -> align -> eval in round-<r>/ (rounds.py).

A finished stage leaves `STAGE_DONE.json` and is skipped by a rerun; a stage that died midway resumes from its
own checkpoints (run.resume=auto) or, for `label`, from the rows already written. `--from STAGE` redoes that stage
and every later one from scratch; `--only STAGE` runs just that one (its inputs must exist).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from .checkpoint import save_json
from .config import ConfigError, field, save_config, to_dict

log = logging.getLogger("rlaif.pipeline")

STAGE_ORDER = ("critique", "sft", "audit", "label", "rm", "align", "eval")
ALGORITHMS = ("ppo", "dpo", "grpo")
DONE = "STAGE_DONE.json"


@dataclass
class PipelineConfig:
    stages: list[str] = field(default_factory=lambda: ["sft", "label", "rm", "align", "eval"],
                              help=f"stages to run, in this order: {', '.join(STAGE_ORDER)}")
    algorithm: Literal["ppo", "dpo", "grpo"] = field(
        "ppo", help="what `align` runs: ppo (reward model + critic), dpo (on the labels directly) or grpo")
    report: bool = field(True, help="write report.html and summary.json at the end")
    rounds: int = field(1, help="iterative RLAIF: after the first pass, N-1 more rounds of label (by the current "
                        "policy) -> rm -> align (from where it stopped) -> eval, each in round-<r>/ (rounds.py)")
    rm_update: Literal["retrain", "continue"] = field(
        "retrain", help="rounds: the reward model of a round is trained on every round's labels so far, from "
        "rm.model (retrain) or from the previous round's reward model (continue)")
    reference: Literal["fixed", "previous"] = field(
        "fixed", help="rounds: the KL reference of a round is the SFT policy (fixed) or the previous round's policy")

    def validate(self) -> None:
        if self.rounds < 1:
            raise ConfigError("config key 'pipeline.rounds': must be >= 1")
        if self.rounds > 1:
            needed = ["label", "align", "eval"] + (["rm"] if self.algorithm != "dpo" else [])
            missing = [s for s in needed if s not in self.stages]
            if missing:
                raise ConfigError(f"config key 'pipeline.rounds': more than one round needs the stages "
                                  f"{', '.join(needed)} (missing: {', '.join(missing)})")
        for s in self.stages:
            if s not in STAGE_ORDER:
                raise ConfigError(f"config key 'pipeline.stages': unknown stage '{s}' ({', '.join(STAGE_ORDER)})")
        order = [STAGE_ORDER.index(s) for s in self.stages]
        if order != sorted(set(order)):
            raise ConfigError(f"config key 'pipeline.stages': {self.stages} must follow the order "
                              f"{', '.join(STAGE_ORDER)} without repeats")


def demo_config_path() -> Path:
    return Path(str(resources.files("rlaif") / "assets" / "configs" / "demo.yaml"))


def stage_folder(stage: str, algorithm: str) -> str:
    """Where a stage writes: `align` in the algorithm's name, eval beside it (eval/ for ppo, eval-<algo>/)."""
    if stage == "align":
        return algorithm
    if stage == "eval" and algorithm != "ppo":
        return f"eval-{algorithm}"
    return stage


def wire(cfg, root: Path):
    """The root config with every stage's inputs pointed at the previous stages' outputs."""
    stages, algo = cfg.pipeline.stages, cfg.pipeline.algorithm
    policy = str(root / "sft" / "model") if "sft" in stages else cfg.sft.model
    labels = str(root / "label" / "preferences.jsonl")
    rm_model = str(root / "rm" / "model")
    r = dataclasses.replace
    judge = cfg.label.judge
    audit_judge = judge
    if judge.panel and judge.panel_combine == "audit":  # the audit weighs each member; the labels use its weights
        audit_judge = r(judge, panel_combine="mean", panel_audit="")
        if "audit" in stages and not judge.panel_audit:
            judge = r(judge, panel_audit=str(root / "audit" / "audit.json"))
    label = r(cfg.label, policy=policy, output="", judge=judge)
    critique = r(cfg.critique, policy=cfg.sft.model, output="")
    sft = r(cfg.sft, data=str(root / "critique" / "critique.jsonl")) if "critique" in stages else cfg.sft
    audit = r(cfg.judge_audit, judge=audit_judge)
    rm = r(cfg.rm, data=labels) if "label" in stages else cfg.rm
    ppo = r(cfg.ppo, policy=policy, validation=r(cfg.ppo.validation, judge=cfg.eval.judge),
            reward=r(cfg.ppo.reward, model=[rm_model]) if "rm" in stages else cfg.ppo.reward)
    grpo = r(cfg.grpo, policy=policy, validation=r(cfg.grpo.validation, judge=cfg.eval.judge),
             reward=r(cfg.grpo.reward, model=[rm_model]) if "rm" in stages else cfg.grpo.reward)
    dpo = r(cfg.dpo, policy=policy, data=labels if "label" in stages else cfg.dpo.data)
    ev = r(cfg.eval, policy=str(root / algo / "policy") if "align" in stages else cfg.eval.policy,
           baseline=policy, reward_models=[rm_model] if "rm" in stages else cfg.eval.reward_models)
    return r(cfg, critique=critique, sft=sft, label=label, judge_audit=audit, rm=rm, ppo=ppo, grpo=grpo, dpo=dpo,
             eval=ev)


def stage_inputs(stage: str, cfg) -> list[Path]:
    """Files a stage reads that an earlier stage writes (checked before `--only`)."""
    algo = cfg.pipeline.algorithm
    align = {"ppo": [cfg.ppo.policy, *cfg.ppo.reward.model], "grpo": [cfg.grpo.policy, *cfg.grpo.reward.model],
             "dpo": [cfg.dpo.policy, cfg.dpo.data]}[algo]
    paths = {"sft": [cfg.sft.data], "label": [cfg.label.policy], "rm": [cfg.rm.data], "align": align,
             "eval": [cfg.eval.policy, cfg.eval.baseline, *cfg.eval.reward_models]}.get(stage, [])
    return [Path(p) for p in paths if "/" in str(p)]  # built-in names and hub ids are not files


def run_stage(stage: str, cfg, root: Path, folder: str | None = None) -> dict:
    """Run one stage in root/<folder> (default: the stage's own); returns what it reports for the summary."""
    run = dataclasses.replace(cfg.run, output_dir=str(root / (folder or stage_folder(stage, cfg.pipeline.algorithm))))
    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = to_dict(cfg)
    save_config(cfg, out / "config.yaml")
    if stage == "critique":
        from .stages import critique

        return {"output": str(critique.train(run, cfg.critique, resolved))}
    if stage == "sft":
        from .stages import sft

        return {"output": str(sft.train(run, cfg.sft, resolved))}
    if stage == "audit":
        from .stages import audit

        report = audit.run_audit(run, cfg.judge_audit, resolved)
        return {"output": str(out / "audit.json"), "reliable": report.get("reliable")}
    if stage == "label":
        from .stages import label

        return {"output": str(label.train(run, cfg.label, resolved))}
    if stage == "rm":
        from .stages import rm

        data = rm.read_data(cfg.rm, run.seed)
        return {"output": str(rm.train(run, cfg.rm, resolved, data=data))}
    if stage == "align" and cfg.pipeline.algorithm == "ppo":
        from .stages import ppo

        return {"output": str(ppo.train(run, cfg.ppo, resolved))}
    if stage == "align" and cfg.pipeline.algorithm == "grpo":
        from .stages import grpo

        return {"output": str(grpo.train(run, cfg.grpo, resolved))}
    if stage == "align":
        from .stages import dpo

        data = dpo.read_data(cfg.dpo, run.seed)
        return {"output": str(dpo.train(run, cfg.dpo, resolved, data=data))}
    if stage == "eval":
        from .stages import evaluate

        result = evaluate.evaluate(run, cfg.eval, resolved)
        return {"output": str(out / "eval.json"), "win_rate": result["win_rate"], "win_rate_ci": result["win_rate_ci"]}
    raise AssertionError(stage)


def run_pipeline(cfg, start_from: str | None = None, only: str | None = None) -> Path:
    """Run (or continue) the pipeline; returns the run folder."""
    cfg.pipeline.validate()
    for flag, stage in (("--from", start_from), ("--only", only)):
        if stage is not None and stage not in cfg.pipeline.stages:
            raise ConfigError(f"{flag} {stage}: not one of this pipeline's stages ({', '.join(cfg.pipeline.stages)})")
    root = Path(cfg.run.output_dir or "runs/pipeline")
    root.mkdir(parents=True, exist_ok=True)
    cfg = wire(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(root))), root)
    save_config(cfg, root / "config.yaml")
    stages = cfg.pipeline.stages
    todo = [only] if only else stages[stages.index(start_from):] if start_from else stages
    fresh = set(todo) if (only or start_from) else set()
    if only:
        missing = [str(p) for p in stage_inputs(only, cfg) if not p.exists()]
        if missing:
            raise FileNotFoundError(f"--only {only}: its inputs do not exist yet: {', '.join(missing)} "
                                    "(run the earlier stages first)")
    timings = load_timings(root)
    for stage in stages:
        folder = stage_folder(stage, cfg.pipeline.algorithm)
        done = root / folder / DONE
        if stage not in todo:
            continue
        if stage in fresh:
            done.unlink(missing_ok=True)
        elif done.exists():
            log.info("pipeline: %s already done (%s), skipped", stage, done)
            continue
        log.info("pipeline: stage %s -> %s", stage, root / folder)
        t0 = time.time()
        stage_cfg = cfg
        if stage in fresh:  # redo from scratch: no resume from this stage's old checkpoints or rows
            stage_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume="never"))
        info = run_stage(stage, stage_cfg, root)
        info.update(stage=stage, seconds=round(time.time() - t0, 1))
        save_json(done, info)
        timings[folder] = info["seconds"]
        save_json(root / "timings.json", timings)
    if cfg.pipeline.rounds > 1 and not only:
        from .rounds import run_rounds

        run_rounds(cfg, root, run_stage)
    if cfg.pipeline.report:
        from .report import write_report

        write_report(root)
    return root


def _read(path: Path):
    if not path.exists():
        return None
    if path.suffix == ".jsonl":
        return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return json.loads(path.read_text(encoding="utf-8"))


def run_summary_lines(root: Path) -> list[str]:
    """One screen: what each stage produced, the win-rate with its interval, the warnings, where the report is."""
    t = load_timings(root)
    lines = [f"rlaif run {root}  (stage minutes: " +
             ", ".join(f"{k} {v / 60:.1f}" for k, v in t.items()) + f"; total {sum(t.values()) / 60:.1f})"]
    sft = [r for r in _read(root / "sft" / "metrics.jsonl") or [] if "loss" in r]  # step 0: held-out loss only
    if sft:
        ev = [r["eval_loss"] for r in _read(root / "sft" / "metrics.jsonl") if "eval_loss" in r]
        lines.append(f"  sft    train loss {sft[0]['loss']:.3f} -> {sft[-1]['loss']:.3f}" +
                     (f"; held-out loss {ev[0]:.3f} -> {ev[-1]:.3f}" if ev else ""))
    audit = _read(root / "audit" / "audit.json")
    if audit:
        o = audit.get("overall", audit)
        verdict = "reliable" if audit.get("reliable") else f"UNRELIABLE ({'; '.join(audit.get('reasons') or [])})"
        lines.append(f"  audit  judge {audit['judge']['judge']}: accuracy {o.get('accuracy')}, consistency "
                     f"{o.get('consistency_rate')} -> {verdict}")
    lab = _read(root / "label" / "label_summary.json")
    if lab:
        lines.append(f"  label  {lab['pairs_written']} preference pairs, position consistency "
                     f"{lab['position_consistency_rate']}, judge {lab['judge']['judge']}")
    rm = _read(root / "rm" / "summary.json")
    if rm and rm.get("eval"):
        lines.append(f"  rm     held-out accuracy {rm['eval']['accuracy']:.3f} on {rm['eval_pairs']} pairs")
    for algo in ALGORITHMS:
        rows = _read(root / algo / "metrics.jsonl")
        if not rows:
            continue
        if algo == "dpo":
            acc = [r["eval_accuracy"] for r in rows if "eval_accuracy" in r]
            train = [r for r in rows if "loss" in r] or [{"loss": math.nan}]
            lines.append(f"  dpo    {len(train)} steps: loss {train[0]['loss']:.3f} -> {train[-1]['loss']:.3f}" +
                         (f"; held-out pair accuracy {acc[0]:.3f} -> {acc[-1]:.3f}" if acc else ""))
            continue
        lines.append(f"  {algo:6s} {len(rows)} iterations: reward {rows[0]['reward_mean']:.3f} -> "
                     f"{rows[-1]['reward_mean']:.3f}, KL {rows[-1]['kl']:.2f} nats, length "
                     f"{rows[0]['response_length']:.1f} -> {rows[-1]['response_length']:.1f} tokens")
    for algo in ALGORITHMS:
        ev = _read(root / stage_folder("eval", algo) / "eval.json")
        if not ev:
            continue
        lo, hi = ev["win_rate_ci"]
        # rlaif eval writes "pairs"; a hand-made eval.json may lack it
        pairs = ev.get("pairs", sum(ev.get(k, 0) for k in ("wins", "ties", "losses")))
        p, b = ev["policy_stats"], ev["baseline_stats"]
        reward = (f"; reward {b['reward_mean']:.3f} -> {p['reward_mean']:.3f}" if p.get("reward_mean") is not None
                  else "")
        lines.append(f"  eval   {algo} vs {Path(ev['baseline']).name or ev['baseline']}: win-rate {ev['win_rate']:.3f} "
                     f"(95% CI {lo:.3f}-{hi:.3f}, {pairs} pairs){reward}; KL {p['kl_mean']:.2f}")
        lines.extend(f"  WARNING {w}" for w in ev.get("warnings", []))
    for r in (_read(root / "rounds.json") or {}).get("rounds", []):
        def f(x, c=None) -> str:
            return "n/a" if x is None else f"{x:.3f}" + (f" ({c[0]:.3f}-{c[1]:.3f})" if c else "")

        lines.append(f"  round {r['round']}: win-rate vs SFT {f(r['win_rate_vs_sft'], r['ci_vs_sft'])}" +
                     (f", vs round {r['round'] - 1} {f(r['win_rate_vs_previous'], r['ci_vs_previous'])}; previous "
                      f"RM accuracy old labels {f(r['previous_rm_accuracy_old_labels'])} -> new on-policy labels "
                      f"{f(r['previous_rm_accuracy_new_labels'])}" if r["round"] > 1 else ""))
    if (root / "report.html").exists():
        lines.append(f"report: {root / 'report.html'}")
    return lines


def print_run_summary(root: Path) -> None:
    print("\n".join(run_summary_lines(root)))


def load_timings(root: Path) -> dict:
    path = root / "timings.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


__all__ = ["PipelineConfig", "STAGE_ORDER", "run_pipeline", "wire", "demo_config_path", "print_run_summary",
           "run_summary_lines"]
