"""SFT data: read rows, format them with the chat template, build completion-only labels.

Accepted rows (JSONL, or a folder written by `datasets.Dataset.save_to_disk`):
- `{"id"?, "prompt" | "messages", "completion"}` — `messages` ends with a user turn;
- `{"id"?, "messages"}` whose last turn is the assistant's answer (the conversational form);
- preference rows `{"id"?, "prompt" | "messages", "chosen", "rejected"}` — the `chosen` answer is trained;
- `builtin:demo-train` / `builtin:demo-heldout`: the shipped prompt sets, `reference` as the completion.
Errors name the file, the line (or dataset row) and the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..ops.sft import completion_labels
from .jsonl import DataError, collect_unique, iter_jsonl, require_str
from .prompts import BUILTIN_PROMPTS, PromptRow, chat_prompt_ids, load_prompts, parse_messages

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


@dataclass(frozen=True)
class SFTRow:
    id: str
    messages: tuple[tuple[str, str], ...]  # ((role, content), ...), ending with a user turn
    completion: str  # the assistant answer to train on
    where: str = field(default="", compare=False)  # "file:line" for error messages

    def prompt_row(self) -> PromptRow:
        return PromptRow(self.id, self.messages)


@dataclass(frozen=True)
class Encoded:
    """One tokenised example: `ids[:prompt_len]` is the prompt, the rest the trained completion."""

    ids: tuple[int, ...]
    prompt_len: int
    prompt_truncated: bool  # the prompt lost tokens on the left to fit max_length
    completion_truncated: bool  # the completion alone did not fit and lost tokens on the right

    @property
    def n_trained(self) -> int:
        return len(self.ids) - self.prompt_len


# ---------------------------------------------------------------------------------------------------------
# reading


def _row_from_object(obj: dict[str, Any], where: str, fallback_id: str) -> SFTRow:
    if "messages" in obj:
        msgs = obj["messages"]
        last = msgs[-1] if isinstance(msgs, list) and msgs else None
        if ("completion" not in obj and "chosen" not in obj and isinstance(last, dict)
                and last.get("role") == "assistant"):
            completion = require_str(last, "content", f"{where}: messages[{len(msgs) - 1}]")
            messages = parse_messages({"messages": msgs[:-1]}, where) if len(msgs) > 1 else None
            if messages is None:
                raise DataError(f"{where}: field 'messages' holds only the assistant turn (no prompt)")
        else:
            messages = parse_messages(obj, where)
            completion = None
    elif "prompt" in obj:
        messages = (("user", require_str(obj, "prompt", where)),)
        completion = None
    else:
        raise DataError(f"{where}: missing field 'prompt' (or 'messages')")
    if completion is None:
        if "completion" in obj:
            completion = require_str(obj, "completion", where)
        elif "chosen" in obj:  # a preference row: train on the preferred answer (as the seed does)
            completion = require_str(obj, "chosen", where)
        else:
            raise DataError(f"{where}: missing field 'completion' (or 'chosen' for preference rows)")
    rid = obj.get("id", fallback_id)
    if rid is None:
        rid = fallback_id
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise DataError(f"{where}: field 'id' must be a string or an integer")
    return SFTRow(str(rid), messages, completion, where)


def _dataset_objects(path: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, fallback id, row) from a `save_to_disk` folder; `datasets` is imported only here."""
    try:
        from datasets import load_from_disk
    except ImportError:
        raise DataError(
            f"{path}: reading a `datasets` folder needs the `datasets` package (pip install datasets), "
            "or convert it to JSONL"
        ) from None
    ds = load_from_disk(str(path))
    if hasattr(ds, "keys") and not hasattr(ds, "features"):  # a DatasetDict: take its train split
        splits = list(ds.keys())
        if "train" not in splits:
            raise DataError(f"{path}: dataset has splits {splits} but no 'train' split")
        ds = ds["train"]
    for i, obj in enumerate(ds):
        if not isinstance(obj, dict):
            raise DataError(f"{path}: row {i}: expected a mapping, got {type(obj).__name__}")
        # columnar storage: a column a row does not use holds None; treat it as absent, as in JSONL
        yield f"{path}: row {i}", f"row-{i}", {k: v for k, v in obj.items() if v is not None}


def _is_dataset_folder(path: Path) -> bool:
    return path.is_dir() and any(
        (path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


def load_sft_rows(arg: str) -> list[SFTRow]:
    """Read SFT rows from a JSONL file, a `datasets` folder or a built-in prompt set; ids must be unique."""
    if arg in BUILTIN_PROMPTS:  # prompt + reference answer as the completion
        rows = []
        for p in load_prompts(arg):
            if not p.reference or not p.reference.strip():
                raise DataError(f"{arg}: prompt '{p.id}' has no 'reference' to train on")
            rows.append(SFTRow(p.id, p.messages, p.reference, f"{arg}:{p.id}"))
        return rows
    path = Path(arg).expanduser()
    objects: Iterable[tuple[str, str, dict[str, Any]]]
    if _is_dataset_folder(path):
        objects = _dataset_objects(path)
    elif path.is_dir():
        raise DataError(f"{path}: a folder that is not a `datasets` save_to_disk folder (no dataset_info.json)")
    else:
        objects = ((f"{path}:{n}", f"line-{n}", obj) for n, obj in iter_jsonl(path))
    return collect_unique(((where, _row_from_object(obj, where, fid)) for where, fid, obj in objects),
                          f"{path}: no rows (the dataset is empty)")


def split_eval(rows: list[SFTRow], fraction: float, seed: int) -> tuple[list[SFTRow], list[SFTRow]]:
    """Seeded split: round(fraction * n) rows (at least 1) held out; the rest keep their order."""
    n_eval = max(1, round(fraction * len(rows)))
    if n_eval >= len(rows):
        raise DataError(f"eval fraction {fraction} of {len(rows)} rows leaves no training rows")
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(perm[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


# ---------------------------------------------------------------------------------------------------------
# tokenising


def end_of_turn_ids(tokenizer) -> set[int]:
    """EOS plus the end-of-turn tokens of common chat formats that this vocabulary has as whole tokens."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    for tok in END_OF_TURN_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id \
                and tokenizer.convert_ids_to_tokens(tid) == tok:
            ids.add(tid)
    return ids


def _conversation_ids(tokenizer, row: SFTRow) -> list[int]:
    """The whole conversation, answer included, in the tokenizer's chat template (ChatML fallback)."""
    if getattr(tokenizer, "chat_template", None):
        chat = [*row.prompt_row().as_chat(), {"role": "assistant", "content": row.completion}]
        ids = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=False)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    # the same text as data.prompts.chat_prompt_ids' fallback, then the answer closed by EOS
    text = "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in row.messages) + "<|im_start|>assistant\n"
    ids = tokenizer(text + row.completion, add_special_tokens=False)["input_ids"]
    return [*ids, tokenizer.eos_token_id]


def encode_row(tokenizer, row: SFTRow, max_length: int, end_ids: set[int] | None = None) -> Encoded:
    """Prompt (with generation prompt) + answer tokens up to and including the answer's end-of-turn token.

    The labels are the tokens after the prompt, so the full conversation must extend the prompt as a prefix.
    Anything the template writes after the end-of-turn token (SmolLM2: a newline) is dropped; a template
    that closes the turn without an end token gets EOS appended. Too long: the prompt loses tokens on the
    left so the answer fits; an answer that cannot fit beside one prompt token is cut on the right.
    """
    end_ids = end_of_turn_ids(tokenizer) if end_ids is None else end_ids
    prompt = chat_prompt_ids(tokenizer, row.prompt_row())
    full = _conversation_ids(tokenizer, row)
    if full[:len(prompt)] != prompt:
        raise DataError(
            f"{row.where or row.id}: the tokenizer's chat template does not extend the prompt (with generation "
            "prompt) as a prefix of the full conversation, so the answer tokens cannot be located; use a "
            "tokenizer whose template renders earlier turns unchanged")
    completion = full[len(prompt):]
    ends = [i for i, t in enumerate(completion) if t in end_ids]
    completion = completion[:ends[-1] + 1] if ends else [*completion, tokenizer.eos_token_id]
    comp_trunc = len(completion) > max_length - 1
    if comp_trunc:
        completion = completion[:max_length - 1]
    prompt_trunc = len(prompt) + len(completion) > max_length
    if prompt_trunc:
        prompt = prompt[len(prompt) + len(completion) - max_length:]
    return Encoded(tuple(prompt + completion), len(prompt), prompt_trunc, comp_trunc)


def encode_rows(tokenizer, rows: list[SFTRow], max_length: int) -> list[Encoded]:
    end_ids = end_of_turn_ids(tokenizer)
    return [encode_row(tokenizer, r, max_length, end_ids) for r in rows]


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask (b, t) from lengths, labels (b, t)."""
    lengths = torch.tensor([len(e.ids) for e in examples], dtype=torch.long)
    t = int(lengths.max())
    ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
    attention = (torch.arange(t)[None, :] < lengths[:, None]).long()
    prompt_lengths = torch.tensor([e.prompt_len for e in examples], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attention,
            "labels": completion_labels(ids, prompt_lengths, lengths)}


__all__ = ["SFTRow", "Encoded", "load_sft_rows", "split_eval", "encode_row", "encode_rows", "collate",
           "end_of_turn_ids"]
