"""Constitutional AI's supervised phase (`rlaif critique`; Bai et al. 2022): answer, critique by a principle,
revise, K times; the revisions become SFT rows and preference rows.

Per chunk of prompts: 1) skip prompts already in the output (a rerun resumes; a torn last line is cut);
2) the policy answers each prompt (sampled, seeded by (run.seed, the chunk's first prompt id) as in `rlaif label`);
3) K rounds: a principle is drawn per (prompt, round) from the constitution (seeded), the critic (a judge backend
that writes: local or api) is shown the question and the current answer and asked the principle's critique
request, then its revision request; the revision becomes the current answer (an empty one keeps the previous
answer and is counted); 4) one row per prompt is appended and fsynced to `critique.jsonl`:

    {"id", "prompt", "chosen": final revision, "rejected": first answer, "label_prob": 1 (0.5 when the revision
     left the answer unchanged), "critique": {"principles", "critiques", "revisions", "critic", "constitution"}}

The same file is SFT data (`sft.data`: the `chosen` answer is trained) and preference data (`rm.data`,
`dpo.data`: revision over original). 5) `critique_summary.json`: counts, lengths, principles used, failures.
Offline the critic is the local SmolLM2-135M-Instruct: weak but real; point real runs at a strong model
(critique.critic.backend=api).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..checkpoint import save_json
from ..config import ConfigError, field, require_min
from ..data.constitution import Principle, load_constitution
from ..data.jsonl import append_jsonl
from ..data.prompts import PromptRow, load_prompts
from ..judges import JudgeConfig, make_judge
from ..models.loading import load_causal_lm, load_tokenizer
from ..rollout.generate import sample_responses
from ..runtime import RunConfig, autocast_for, setup_run
from .label import prompt_seed, read_done

log = logging.getLogger("rlaif.critique")


@dataclass
class CritiqueConfig:
    policy: str = field("smollm2-135m-instruct", help="model that writes the first answers: built-in name, folder or "
                        "hub id")
    prompts: str = field("builtin:demo-train", help="prompt JSONL ({id, prompt | messages}) or builtin:demo-train")
    max_prompts: int = field(0, help="only the first N prompts (0 = all)")
    constitution: str = field("builtin:default", help="YAML of principles {name, critique, revision}, or "
                              "builtin:default (8 principles written for rlaif)")
    critic: JudgeConfig = field(default_factory=JudgeConfig, help="who critiques and revises: a judge backend "
                                "that writes (local: greedy; api: temperature 0, cached); offline the local "
                                "SmolLM2, weak but real: point real runs at a strong model")
    revisions: int = field(1, help="critique-revision rounds per prompt (K), each with a freshly drawn principle")
    max_new_tokens: int = field(96, help="budget of the first answer")
    critique_tokens: int = field(96, help="budget of each critique")
    revision_tokens: int = field(128, help="budget of each revision")
    temperature: float = field(0.7, help="sampling temperature of the first answers")
    top_p: float = field(1.0, help="nucleus sampling of the first answers")
    max_prompt_tokens: int = field(512, help="longer prompts keep their last tokens")
    prompts_per_batch: int = field(8, help="prompts answered, critiqued and revised together")
    output: str = field("", help="JSONL to append to (empty = <run.output_dir>/critique.jsonl); run.resume=never "
                        "empties it first")

    def validate(self) -> None:
        require_min(self, "critique", 0, "max_prompts")
        require_min(self, "critique", 1, "revisions", "max_new_tokens", "critique_tokens", "revision_tokens",
                    "max_prompt_tokens", "prompts_per_batch")
        if self.temperature <= 0:
            raise ConfigError("config key 'critique.temperature': must be > 0")
        if self.critic.backend not in ("local", "api") or self.critic.panel:
            raise ConfigError("config key 'critique.critic.backend': the critic must write text: local or api "
                              "(not a panel)")


def draw_principle(principles: tuple[Principle, ...], seed: int, prompt_id: str, k: int) -> Principle:
    """Step 3: the principle of round k for a prompt, the same on every rerun."""
    return random.Random(prompt_seed(seed, f"{prompt_id}:{k}")).choice(principles)


def critique_messages(row: PromptRow, answer: str, principle: Principle) -> list[dict[str, str]]:
    """The conversation so far (every turn), the answer, then the principle's critique request."""
    return [*row.as_chat(), {"role": "assistant", "content": answer}, {"role": "user", "content": principle.critique}]


def revision_messages(row: PromptRow, answer: str, principle: Principle, critique: str) -> list[dict[str, str]]:
    return [*critique_messages(row, answer, principle), {"role": "assistant", "content": critique},
            {"role": "user", "content": f"{principle.revision} Reply with the rewritten answer only."}]


def first_answers(model, tokenizer, chunk: list[PromptRow], cfg: CritiqueConfig, seed: int, device, amp
                  ) -> list[str]:
    """Step 2: one sampled answer per prompt, reproducible from (seed, the chunk's first prompt id)."""
    torch.manual_seed(prompt_seed(seed, chunk[0].id))
    rollout, _ = sample_responses(model, tokenizer, chunk, max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, top_p=cfg.top_p,
                                  max_prompt_tokens=cfg.max_prompt_tokens, batch_size=len(chunk), device=device,
                                  autocast=amp())
    return [r.strip() for r in rollout.responses]


def train(run: RunConfig, cfg: CritiqueConfig, resolved_config: dict | None = None, critic=None) -> Path:
    """Critique and revise; returns the output JSONL. `critic` overrides cfg.critic (tests)."""
    t0 = time.time()
    cfg.validate()
    out, device = setup_run(run)
    amp = autocast_for(device, run.precision)
    output = Path(cfg.output) if cfg.output else out / "critique.jsonl"
    output.parent.mkdir(parents=True, exist_ok=True)
    if run.resume == "never":
        output.unlink(missing_ok=True)
    constitution = load_constitution(cfg.constitution)
    prompts = load_prompts(cfg.prompts)
    if cfg.max_prompts:
        prompts = prompts[:cfg.max_prompts]
    # 1. resume
    rows = read_done(output)
    done = {r["id"] for r in rows}
    chunks = [prompts[s:s + cfg.prompts_per_batch] for s in range(0, len(prompts), cfg.prompts_per_batch)]
    chunks = [c for c in chunks if any(p.id not in done for p in c)]
    counts = {"prompts_this_run": 0, "unchanged": 0, "empty_answers_skipped": 0, "empty_revisions_kept_previous": 0,
              "failed_calls": 0}
    model = tokenizer = None
    if chunks:
        tokenizer = load_tokenizer(cfg.policy, padding_side="left")
        model = load_causal_lm(cfg.policy, device=device).eval().requires_grad_(False)
        critic = critic or make_judge(cfg.critic, device=device, autocast=amp, key="critique.critic")
        if not callable(getattr(critic, "generate", None)):
            raise ConfigError(f"config key 'critique.critic': judge {critic.id} does not write text (use a plain "
                              "local or api judge: no rubric, template_variants or panel)")
    bar = tqdm(total=sum(p.id not in done for c in chunks for p in c), desc="critique", disable=not run.progress)
    for chunk in chunks:
        # 2. first answers (for the whole chunk, so a rerun reproduces them)
        answers = first_answers(model, tokenizer, chunk, cfg, run.seed, device, amp)
        todo = [(p, a) for p, a in zip(chunk, answers) if p.id not in done]
        counts["empty_answers_skipped"] += sum(not a for _, a in todo)
        todo = [(p, a) for p, a in todo if a]
        current = {p.id: a for p, a in todo}
        trace: dict[str, dict[str, list[str]]] = {p.id: {"principles": [], "critiques": [], "revisions": []}
                                                  for p, _ in todo}
        # 3. K rounds of critique and revision, batched over the chunk
        for k in range(cfg.revisions):
            drawn = [draw_principle(constitution.principles, run.seed, p.id, k) for p, _ in todo]
            crits = critic.generate([critique_messages(p, current[p.id], pr) for (p, _), pr in zip(todo, drawn)],
                                    cfg.critique_tokens)
            revs = critic.generate([revision_messages(p, current[p.id], pr, c.text or "")
                                    for (p, _), pr, c in zip(todo, drawn, crits)], cfg.revision_tokens)
            for (p, _), pr, c, r in zip(todo, drawn, crits, revs):
                counts["failed_calls"] += (c.error is not None) + (r.error is not None)
                t = trace[p.id]
                t["principles"].append(pr.name)
                t["critiques"].append(c.text or "")
                t["revisions"].append(r.text or "")
                if r.text:
                    current[p.id] = r.text
                else:
                    counts["empty_revisions_kept_previous"] += 1
        # 4. one row per prompt, appended and fsynced
        for p, first in todo:
            final = current[p.id]
            same = final.strip() == first.strip()
            counts["unchanged"] += same
            row = {"id": p.id, "prompt": p.text, **({"messages": p.as_chat()} if len(p.messages) > 1 else {}),
                   "chosen": final, "rejected": first, "label_prob": 0.5 if same else 1.0,
                   "critique": {**trace[p.id], "critic": critic.metadata().get("judge"),
                                "constitution": constitution.name, "constitution_sha256": constitution.sha256}}
            append_jsonl(output, row)
            rows.append(row)
            counts["prompts_this_run"] += 1
            bar.update(1)
    bar.close()
    # 5. summary
    summary = summarise(rows, counts, time.time() - t0, str(output), constitution.name)
    save_json(out / "critique_summary.json", summary)
    log.info("critique: %d prompts (%d this run), %d revised, %d unchanged; principles %s", summary["prompts"],
             counts["prompts_this_run"], summary["revised"], summary["unchanged"], summary["principles_used"])
    if counts["failed_calls"]:
        log.warning("%d critic calls failed past their retries; those rounds kept the previous answer",
                    counts["failed_calls"])
    return output


def summarise(rows: list[dict], counts: dict[str, int], seconds: float, output: str, constitution: str
              ) -> dict[str, Any]:
    used: dict[str, int] = {}
    for r in rows:
        for name in r["critique"]["principles"]:
            used[name] = used.get(name, 0) + 1
    n = len(rows)
    unchanged = sum(r["label_prob"] == 0.5 for r in rows)
    return {"prompts": n, "revised": n - unchanged, "unchanged": unchanged,
            "mean_chars_first": sum(len(r["rejected"]) for r in rows) / n if n else None,
            "mean_chars_final": sum(len(r["chosen"]) for r in rows) / n if n else None,
            "principles_used": used, "constitution": constitution, **counts,
            "wall_time_this_run_s": round(seconds, 3), "output": output}


__all__ = ["CritiqueConfig", "train", "draw_principle", "critique_messages", "revision_messages"]
