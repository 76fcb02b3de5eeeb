"""Prompt sets: `{"id", "prompt" | "messages", "reference"?}` rows, or a shipped built-in set."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .jsonl import DataError, iter_jsonl, require_str

BUILTIN_PROMPTS = {
    "builtin:demo-train": "train.jsonl",
    "builtin:demo-multiturn": "multiturn.jsonl",  # two- and three-turn conversations (issue 18)
    "builtin:demo-val": "val.jsonl",  # carved out of the training prompts: for choosing settings, never trained on
    "builtin:demo-heldout": "heldout.jsonl",
}


@dataclass(frozen=True)
class PromptRow:
    id: str
    messages: tuple[tuple[str, str], ...]  # ((role, content), ...), ending with a user turn
    reference: str | None = None

    @property
    def text(self) -> str:
        """What a reward model or judge is shown as the question: the user turn of a one-turn prompt, the whole
        conversation so far (`history_text`) of a multi-turn one."""
        return history_text(self.messages)

    @property
    def last_user(self) -> str:
        return self.messages[-1][1]

    def as_chat(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def history_text(messages: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> str:
    """A conversation ending with a user turn as the question a judge or a reward model reads: a lone user turn
    as it is; several turns as a transcript, one `Role: content` block per turn, so the earlier turns reach
    them unchanged. The answer that follows is the last assistant turn, the one generated and rewarded."""
    if len(messages) == 1 and messages[0][0] == "user":
        return messages[0][1]
    return "\n\n".join(f"{ROLE_NAMES.get(r, r.capitalize())}: {c}" for r, c in messages)


def resolve_prompts_path(arg: str) -> Path:
    if arg in BUILTIN_PROMPTS:
        return Path(str(resources.files("rlaif") / "assets" / "prompts" / BUILTIN_PROMPTS[arg]))
    return Path(arg)


def parse_messages(obj: dict, where: str) -> tuple[tuple[str, str], ...]:
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: field 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise DataError(f"{where}: field 'messages[{i}]' must be an object with role and content")
        role = require_str(m, "role", f"{where}: messages[{i}]")
        content = require_str(m, "content", f"{where}: messages[{i}]")
        out.append((role, content))
    if out[-1][0] != "user":
        raise DataError(f"{where}: field 'messages' must end with a user turn")
    return tuple(out)


def load_prompts(arg: str) -> list[PromptRow]:
    """Read a prompt JSONL (or a built-in set). Errors name file, line and field; ids must be unique."""
    path = resolve_prompts_path(arg)
    rows: list[PromptRow] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if "messages" in obj:
            messages = parse_messages(obj, where)
        elif "prompt" in obj:
            messages = (("user", require_str(obj, "prompt", where)),)
        else:
            raise DataError(f"{where}: missing field 'prompt' (or 'messages')")
        rid = obj.get("id", f"line-{lineno}")
        if not isinstance(rid, (str, int)):
            raise DataError(f"{where}: field 'id' must be a string or an integer")
        rid = str(rid)
        if rid in seen:
            raise DataError(f"{where}: field 'id' duplicates '{rid}' from line {seen[rid]}")
        seen[rid] = lineno
        ref = obj.get("reference")
        if ref is not None and not isinstance(ref, str):
            raise DataError(f"{where}: field 'reference' must be a string")
        rows.append(PromptRow(rid, messages, ref))
    if not rows:
        raise DataError(f"{path}: no prompts (the file is empty)")
    return rows


def chat_prompt_ids(tokenizer, row: PromptRow) -> list[int]:
    """Token ids of a prompt in the tokenizer's chat template (ChatML when it has none), ready to answer."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(row.as_chat(), add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    text = "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in row.messages) + "<|im_start|>assistant\n"
    return tokenizer(text, add_special_tokens=False)["input_ids"]
