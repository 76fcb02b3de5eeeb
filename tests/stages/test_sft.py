"""SFT on a tiny random Llama with SmolLM2's tokenizer: labels, data errors, smoke, accumulation, resume, CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import interrupt_after_checkpoint

from rlaif.cli import main as cli_main
from rlaif.config import ConfigError, load_config
from rlaif.configs import RootConfig
from rlaif.data.jsonl import DataError
from rlaif.data.sft import SFTRow, collate, encode_row, encode_rows, load_sft_rows
from rlaif.metrics import read_metrics
from rlaif.ops import IGNORE_INDEX
from rlaif.stages import sft

REWARDS = Path(__file__).resolve().with_name("rewards_for_tests.py")

QA = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Name a primary colour.", "Red."),
    ("How do I boil an egg?", "Put it in boiling water for about nine minutes, then cool it in cold water."),
    ("Define photosynthesis.", "Plants turn light, water and carbon dioxide into sugar and oxygen."),
    ("Write a two-line poem about rain.", "Soft rain taps the glass,\nand the grey afternoon hums."),
    ("Why is the sky blue?", "Air scatters blue light more than red light."),
]


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture()
def sft_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "sft.jsonl", [{"id": f"r{i}", "prompt": q, "completion": a}
                                                for i, (q, a) in enumerate(QA)])


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from rlaif.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def sft_args(out, model: str, data: str, *extra: str) -> list[str]:
    return ["sft", f"run.output_dir={out}", "run.progress=false", "run.seed=0", f"sft.model={model}",
            f"sft.data={data}", "sft.max_steps=3", "sft.micro_batch_size=2", "sft.gradient_accumulation_steps=2",
            "sft.learning_rate=0.001", "sft.checkpoint_every=0", *extra]


def trained_text(tok, ids_row: torch.Tensor, labels_row: torch.Tensor) -> str:
    return tok.decode([int(t) for t in labels_row if t != IGNORE_INDEX])


# ---------------------------------------------------------------- labels


def test_labels_train_the_answer_and_its_end_of_turn_only(tok):
    """Prompt and padding are -100; the answer tokens and `<|im_end|>` are labelled, nothing else."""
    rows = [SFTRow(f"r{i}", (("user", q),), a) for i, (q, a) in enumerate(QA)]
    examples = encode_rows(tok, rows, max_length=512)
    for pad_id in (tok.pad_token_id, tok.eos_token_id):  # pad == eos (the GGUF tokenizer) changes nothing
        batch = collate(examples, pad_id)
        ids, labels, attn = batch["input_ids"], batch["labels"], batch["attention_mask"]
        for i, (row, ex) in enumerate(zip(rows, examples)):
            n = len(ex.ids)
            assert trained_text(tok, ids[i], labels[i]) == row.completion + "<|im_end|>"
            assert (labels[i, :ex.prompt_len] == IGNORE_INDEX).all()  # the prompt
            assert (labels[i, n:] == IGNORE_INDEX).all() and (attn[i, n:] == 0).all()  # the padding
            assert torch.equal(labels[i, ex.prompt_len:n], ids[i, ex.prompt_len:n])  # the answer, contiguous
            assert int(labels[i, n - 1]) == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
            assert tok.decode(list(ex.ids[:ex.prompt_len])).endswith("<|im_start|>assistant\n")
        assert (labels == IGNORE_INDEX).sum() > 0 and (attn.sum(1) < ids.shape[1]).any()  # padding happened


def test_preference_rows_train_the_chosen_answer(tmp_path, tok):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"id": "a", "prompt": "Say hi.", "chosen": "Hi there!", "rejected": "Go away."},
        {"id": "b", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
         "chosen": "4", "rejected": "5"},
    ])
    rows = load_sft_rows(path)
    assert [r.completion for r in rows] == ["Hi there!", "4"]
    assert rows[1].messages == (("system", "Be brief."), ("user", "2+2?"))
    batch = collate(encode_rows(tok, rows, 256), tok.pad_token_id)
    assert trained_text(tok, batch["input_ids"][0], batch["labels"][0]) == "Hi there!<|im_end|>"
    assert trained_text(tok, batch["input_ids"][1], batch["labels"][1]) == "4<|im_end|>"


def test_conversational_rows_and_builtin_references(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    ])
    (row,) = load_sft_rows(path)
    assert row.messages == (("user", "Hi"),) and row.completion == "Hello!" and row.id == "line-1"
    builtin = load_sft_rows("builtin:demo-train")
    first = json.loads(Path(sft.__file__).parents[1].joinpath("assets/prompts/train.jsonl").open().readline())
    assert builtin[0].completion == first["reference"] and builtin[0].messages == (("user", first["prompt"]),)


def test_chatml_fallback_without_a_template(tok):
    import copy

    plain = copy.deepcopy(tok)
    plain.chat_template = None
    row = SFTRow("r", (("user", "Hi"),), "Hello, friend.")
    ex = encode_row(plain, row, 256)
    assert plain.decode(list(ex.ids[ex.prompt_len:])) == "Hello, friend.<|im_end|>"
    assert plain.decode(list(ex.ids[:ex.prompt_len])) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_template_that_does_not_extend_the_prompt_is_a_clear_error(tok):
    import copy

    odd = copy.deepcopy(tok)
    # the generation prompt says "assistant", but finished turns are rendered as "bot": no common prefix
    odd.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + ('bot' if m['role'] == 'assistant' else "
                         "m['role']) + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    with pytest.raises(DataError, match="does not extend the prompt"):
        encode_row(odd, SFTRow("r", (("user", "Hi"),), "Hello", "data.jsonl:7"), 256)


def test_truncation_keeps_the_answer_and_counts(tok):
    long_q = " ".join(["word"] * 300)
    row = SFTRow("r", (("user", long_q),), "Short answer.")
    ex = encode_row(tok, row, 64)
    assert len(ex.ids) == 64 and ex.prompt_truncated and not ex.completion_truncated
    assert tok.decode(list(ex.ids[ex.prompt_len:])) == "Short answer.<|im_end|>"  # the answer is whole
    assert tok.decode(list(ex.ids[:ex.prompt_len])).endswith("word<|im_end|>\n<|im_start|>assistant\n")  # left cut
    long_a = SFTRow("r2", (("user", "Talk."),), " ".join(["blah"] * 300))
    ex2 = encode_row(tok, long_a, 64)
    assert len(ex2.ids) == 64 and ex2.completion_truncated and ex2.prompt_len == 1  # one prompt token remains
    assert tok.eos_token_id not in ex2.ids[1:]  # the cut answer has no end-of-turn to learn


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("lines, message", [
    ([{"id": "a", "prompt": "Q?", "completion": "A."}, {"id": "b", "prompt": "Q2?"}],
     ":2: missing field 'completion' (or 'chosen'"),
    ([{"id": "a", "prompt": "Q?", "completion": "  "}], ":1: field 'completion' is empty"),
    ([{"id": "a", "prompt": "", "completion": "A."}], ":1: field 'prompt' is empty"),
    ([{"id": "a", "prompt": "Q?", "chosen": 3, "rejected": "x"}], ":1: field 'chosen' must be a string"),
    ([{"id": "a", "prompt": "Q?", "completion": "A."}, {"id": "a", "prompt": "Q?", "completion": "B."}],
     ":2: field 'id' duplicates 'a' from "),
    ([{"id": "a", "completion": "A."}], ":1: missing field 'prompt' (or 'messages')"),
    (['{"id": "a", "prompt": "Q?", "completion": "A."', ], ":1: malformed JSON"),
    ([], "no rows (the dataset is empty)"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as e:
        load_sft_rows(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "Q", "completion": "A"}\n{"prompt": "caf\xe9", "completion": "A"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not valid UTF-8"):
        load_sft_rows(str(path))


def test_bad_data_through_the_cli_exits_2_with_one_line(tmp_path, tiny_model_dir, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "prompt": "Q?", "completion": "A."},
                                                 {"id": "b", "prompt": "Q?", "rejected": "x"}])
    assert cli_main(sft_args(tmp_path / "run", tiny_model_dir, path)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{path}:2:" in lines[0] and "'completion'" in lines[0]


def test_datasets_folder_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(DataError, match=r"needs the `datasets` package \(pip install datasets\)"):
        load_sft_rows(str(folder))


def test_datasets_folder_rows(tmp_path):
    """A real `Dataset.save_to_disk` folder (single split and a DatasetDict with a train split)."""
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": "Q1", "completion": "A1", "chosen": None, "rejected": None},
            {"prompt": "Q2", "completion": None, "chosen": "A2", "rejected": "B2"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    got = load_sft_rows(str(tmp_path / "ds"))
    assert [(r.id, r.completion) for r in got] == [("row-0", "A1"), ("row-1", "A2")]
    bad = rows + [{"prompt": "Q3", "completion": None, "chosen": None, "rejected": None}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(bad)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"dd: row 2: .*'completion'"):
        load_sft_rows(str(tmp_path / "dd"))


# ---------------------------------------------------------------- config / CLI


def test_cli_bad_key_exits_2(capsys):
    assert cli_main(["sft", "sft.learning_rat=1e-5"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "'sft.learning_rat'" in lines[0]


@pytest.mark.parametrize("override, key", [
    ("sft.min_lr_ratio=2", "sft.min_lr_ratio"),
    ("sft.micro_batch_size=0", "sft.micro_batch_size"),
    ("sft.max_length=1", "sft.max_length"),
    ("sft.eval_fraction=1.0", "sft.eval_fraction"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(RootConfig, None, [override])


def test_demo_config_loads():
    cfg = load_config(RootConfig, Path(__file__).resolve().parents[2] / "configs" / "sft-demo.yaml")
    assert cfg.sft.data == "builtin:demo-train" and cfg.sft.model == "smollm2-135m-instruct"


# ---------------------------------------------------------------- training


def capture_model(monkeypatch) -> dict:
    seen: dict = {}
    original = sft.load_causal_lm

    def wrapper(*a, **k):
        model = original(*a, **k)
        seen["model"] = model
        seen["initial"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model

    monkeypatch.setattr(sft, "load_causal_lm", wrapper)
    return seen


def test_sft_smoke_cli_then_ppo_accepts_the_model(tmp_path, tiny_model_dir, sft_file, prompts_file, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen = capture_model(monkeypatch)
    out = tmp_path / "run"
    assert cli_main(sft_args(out, tiny_model_dir, sft_file, "sft.eval_fraction=0.34", "sft.warmup_steps=1",
                             "sft.checkpoint_every=2")) == 0
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert set(rows[0]) == {"step", "eval_loss", "eval_ppl", "eval_tokens"}  # held-out loss before training
    for r in rows[1:]:
        for k in ("loss", "lr", "grad_norm", "tokens"):
            assert r[k] is not None and math.isfinite(r[k]), (k, r)
        assert r["rows"] == 4 and r["prompts_truncated"] == 0 and r["completions_truncated"] == 0
    assert rows[1]["lr"] == pytest.approx(1e-3)  # warm-up of 1 step reaches the peak
    assert rows[3]["lr"] == pytest.approx(3e-4)  # the last step uses the floor (30 %)
    assert "eval_loss" in rows[3] and rows[3]["eval_tokens"] == rows[0]["eval_tokens"] > 0

    # every trainable parameter moved
    model = seen["model"]
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p.detach(), seen["initial"][name]), f"{name} did not change"
    # the output is a plain Hugging Face folder with the tokenizer, holding the trained weights
    final = out / "model"
    reloaded = AutoModelForCausalLM.from_pretrained(final)
    for name, p in reloaded.named_parameters():
        torch.testing.assert_close(p, dict(model.named_parameters())[name].detach().cpu())
    assert AutoTokenizer.from_pretrained(final).chat_template
    assert sorted(c.name for c in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]

    # ... and PPO takes it as its policy
    ppo_out = tmp_path / "ppo"
    assert cli_main([
        "ppo", f"run.output_dir={ppo_out}", "run.progress=false", f"ppo.policy={final}",
        f"ppo.prompts={prompts_file}", f"ppo.reward.function={REWARDS}:length_reward", "ppo.iterations=1",
        "ppo.batch_size=2", "ppo.micro_batch_size=2", "ppo.gradient_accumulation_steps=1",
        "ppo.forward_batch_size=2", "ppo.generation.max_new_tokens=4", "ppo.checkpoint_every=0",
    ]) == 0
    assert (ppo_out / "policy" / "config.json").is_file()


def _train(out: Path, model: str, data: str, *overrides: str) -> tuple[list[dict], dict]:
    cfg = load_config(RootConfig, None, [f"run.output_dir={out}", "run.progress=false", "run.seed=0",
                                         f"sft.model={model}", f"sft.data={data}", "sft.learning_rate=0.001",
                                         "sft.checkpoint_every=0", *overrides])
    from safetensors.torch import load_file

    final = sft.train(cfg.run, cfg.sft)
    return read_metrics(out), load_file(str(final / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


def test_accumulation_1x4_equals_4x1(tmp_path, tiny_model_dir, sft_file):
    """Answers of different lengths: a per-micro-batch mean would weight tokens unequally; ours does not."""
    common = ("sft.max_steps=2", "sft.max_grad_norm=1000")
    rows_a, w_a = _train(tmp_path / "a", tiny_model_dir, sft_file, "sft.micro_batch_size=1",
                         "sft.gradient_accumulation_steps=4", *common)
    rows_b, w_b = _train(tmp_path / "b", tiny_model_dir, sft_file, "sft.micro_batch_size=4",
                         "sft.gradient_accumulation_steps=1", *common)
    for ra, rb in zip(rows_a, rows_b):
        assert ra["tokens"] == rb["tokens"]
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4)
    assert_same_weights(w_a, w_b)


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, sft_file, monkeypatch):
    """4 steps over 2 epochs with warm-up, cosine and a held-out split; killed after the step-2 checkpoint."""
    args = ("sft.max_steps=4", "sft.micro_batch_size=2", "sft.gradient_accumulation_steps=2",
            "sft.warmup_steps=1", "sft.eval_fraction=0.2", "sft.eval_every=1", "sft.checkpoint_every=1",
            "run.resume=auto")
    with monkeypatch.context() as mp:
        interrupt_after_checkpoint(mp, sft, 2)
        with pytest.raises(KeyboardInterrupt):
            _train(tmp_path / "split", tiny_model_dir, sft_file, *args)
    assert [r["step"] for r in read_metrics(tmp_path / "split")] == [0, 1, 2]
    state = json.loads((tmp_path / "split" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state == {"step": 2, "epoch": 1, "offset": 0, "total_steps": 4}  # 5 rows, batch 4: 2 steps per epoch

    resumed, w_resumed = _train(tmp_path / "split", tiny_model_dir, sft_file, *args)
    straight, w_straight = _train(tmp_path / "whole", tiny_model_dir, sft_file, *args)
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == [0, 1, 2, 3, 4]
    for a, b in zip(resumed, straight):
        for k in ("loss", "lr", "grad_norm", "eval_loss", "tokens"):
            assert (a.get(k) is None) == (b.get(k) is None), k
            if a.get(k) is not None:
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["step"], k)
    assert_same_weights(w_resumed, w_straight)


def test_rerun_with_more_steps_continues_the_run(tmp_path, tiny_model_dir, sft_file):
    """With a flat schedule (min_lr_ratio=1) 2 steps then max_steps=3 equals 3 steps straight."""
    args = ("sft.micro_batch_size=2", "sft.gradient_accumulation_steps=1", "sft.min_lr_ratio=1.0",
            "sft.checkpoint_every=1")
    _train(tmp_path / "split", tiny_model_dir, sft_file, "sft.max_steps=2", *args)
    resumed, w_resumed = _train(tmp_path / "split", tiny_model_dir, sft_file, "sft.max_steps=3", *args)
    straight, w_straight = _train(tmp_path / "whole", tiny_model_dir, sft_file, "sft.max_steps=3", *args)
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], rel=1e-5)
    assert_same_weights(w_resumed, w_straight)


def test_resume_refuses_another_stages_checkpoints(tmp_path, tiny_model_dir, sft_file, capsys):
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000001"
    (ckpt / "policy").mkdir(parents=True)
    (ckpt / "COMPLETE").write_text("ok\n")  # a PPO checkpoint: policy/, value/, no model/
    assert cli_main(sft_args(tmp_path / "run", tiny_model_dir, sft_file)) == 2
    assert "is not an SFT checkpoint" in capsys.readouterr().err
