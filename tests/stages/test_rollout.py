"""Rollout helpers on the real SmolLM2 tokenizer: EOS masking, left padding, and log-prob alignment."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from rlaif.data.prompts import PromptRow
from rlaif.models.loading import load_causal_lm, load_sequence_classifier, load_tokenizer
from rlaif.rollout.generate import (
    chat_prompt_ids,
    encode_prompts,
    eos_token_ids,
    sample_responses,
    truncate_after_eos,
)
from rlaif.rollout.scoring import policy_logits, response_logprobs, response_values


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir, padding_side="left")


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    return load_causal_lm(tiny_model_dir).eval()


def _row(i: int, text: str) -> PromptRow:
    return PromptRow(f"r{i}", (("user", text),))


SHORT = _row(0, "Hi?")
LONG = _row(1, "Please explain, in some detail and with a couple of examples, why the sky looks blue at noon "
                  "but red at sunset.")


# ---------------------------------------------------------------- truncate_after_eos


def test_truncate_after_eos_real_ids(tok):
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert eos == tok.convert_tokens_to_ids("<|im_end|>") and pad != eos
    w = tok("Paris is lovely today", add_special_tokens=False)["input_ids"][:4]
    assert len(w) == 4
    a, b, c, d = w
    ids = torch.tensor([
        [a, b, eos, c, eos, d],  # EOS at 2: kept; everything after masked (including the second EOS)
        [a, b, c, d, a, b],  # no EOS: fully valid, not ended
        [eos, a, b, c, d, a],  # EOS as the very first response token
        [a, b, c, d, a, eos],  # EOS in the last slot
    ])
    out, mask, ended = truncate_after_eos(ids, [eos], pad)
    assert mask.dtype == torch.bool and ended.dtype == torch.bool
    assert mask.tolist() == [
        [True, True, True, False, False, False],
        [True] * 6,
        [True, False, False, False, False, False],
        [True] * 6,
    ]
    assert ended.tolist() == [True, False, True, True]
    assert out.tolist() == [
        [a, b, eos, pad, pad, pad],
        [a, b, c, d, a, b],
        [eos, pad, pad, pad, pad, pad],
        [a, b, c, d, a, eos],
    ]
    # every row's first response token is inside the mask, and the kept EOS is the last masked position
    assert mask[:, 0].all()
    for row, m in zip(out, mask):
        n = int(m.sum())
        assert (row[n:] == pad).all()
    # several EOS ids (tokenizer EOS + generation-config EOS): the first of either ends the response
    other = tok.convert_tokens_to_ids("<|endoftext|>")
    _, mask2, ended2 = truncate_after_eos(torch.tensor([[a, other, b, eos]]), [eos, other], pad)
    assert mask2.tolist() == [[True, True, False, False]] and ended2.tolist() == [True]


def test_eos_token_ids_merges_generation_config(tok, tiny_lm):
    ids = eos_token_ids(tok, tiny_lm)
    assert tok.eos_token_id in ids
    tiny_lm.generation_config.eos_token_id = [tok.eos_token_id, 7]
    try:
        assert eos_token_ids(tok, tiny_lm) == sorted({tok.eos_token_id, 7})
    finally:
        tiny_lm.generation_config.eos_token_id = tok.eos_token_id


# ---------------------------------------------------------------- encode_prompts


def test_encode_prompts_left_pads(tok):
    short, long = chat_prompt_ids(tok, SHORT), chat_prompt_ids(tok, LONG)
    assert len(long) > len(short) + 10
    # the chat template was applied and ends ready for the assistant to answer
    assert "Hi?" in tok.decode(short) and tok.decode(short).rstrip().endswith("assistant")
    enc = encode_prompts(tok, [SHORT, LONG], max_prompt_tokens=4096)
    p = len(long)
    assert enc.ids.shape == enc.mask.shape == (2, p) and enc.n_truncated == 0
    n_pad = p - len(short)
    assert enc.ids[0, :n_pad].eq(tok.pad_token_id).all() and enc.mask[0, :n_pad].eq(0).all()
    assert enc.ids[0, n_pad:].tolist() == short and enc.mask[0, n_pad:].eq(1).all()
    assert enc.ids[1].tolist() == long and enc.mask[1].eq(1).all()


def test_encode_prompts_truncates_from_the_left(tok):
    short, long = chat_prompt_ids(tok, SHORT), chat_prompt_ids(tok, LONG)
    limit = len(short) + 3  # SHORT fits, LONG (twice) does not
    enc = encode_prompts(tok, [LONG, SHORT, LONG], max_prompt_tokens=limit)
    assert enc.n_truncated == 2
    assert enc.ids.shape == (3, limit)
    # the kept tokens are the *last* ones: the end of the question and the assistant header survive
    assert enc.ids[0].tolist() == long[-limit:] == enc.ids[2].tolist()
    assert enc.mask[0].eq(1).all()
    assert enc.ids[1, 3:].tolist() == short and enc.mask[1, :3].eq(0).all()
    assert tok.decode(enc.ids[0]).rstrip().endswith("assistant")


# ---------------------------------------------------------------- log-probs and values under left padding


def _batch(tok, seed: int = 0):
    enc = encode_prompts(tok, [SHORT, LONG], max_prompt_tokens=4096)
    g = torch.Generator().manual_seed(seed)
    resp = torch.randint(10, len(tok) - 10, (2, 5), generator=g)
    resp[0, 3] = tok.eos_token_id  # row 0 ends at position 3; position 4 is padding
    resp, rmask, _ = truncate_after_eos(resp, [tok.eos_token_id], tok.pad_token_id)
    return enc, resp, rmask


def _unpadded(enc, resp, rmask, i):
    prompt = enc.ids[i][enc.mask[i].bool()]
    response = resp[i][rmask[i]]
    return prompt, response


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_logprobs_match_an_unpadded_forward(tok, tiny_lm, temperature):
    enc, resp, rmask = _batch(tok)
    with torch.no_grad():
        lp, ent, logits = response_logprobs(tiny_lm, enc.ids, enc.mask, resp, rmask, temperature,
                                            with_entropy=True)
        raw = policy_logits(tiny_lm, enc.ids, enc.mask, resp, rmask)
    assert lp.shape == ent.shape == resp.shape and logits.shape == (2, 5, len(tok))
    assert_close(raw, logits)
    for i in range(2):
        prompt, response = _unpadded(enc, resp, rmask, i)
        with torch.no_grad():
            full = tiny_lm(input_ids=torch.cat([prompt, response])[None]).logits[0]
        p = len(prompt)
        # position p-1+t predicts response token t; response token 0 is scored by the last prompt position
        expected_logits = full[p - 1 : p - 1 + len(response)]
        ref = torch.log_softmax(expected_logits / temperature, -1).gather(-1, response[:, None]).squeeze(-1)
        n = len(response)
        assert_close(logits[i, :n], expected_logits, atol=1e-5, rtol=0)
        assert_close(lp[i, :n], ref, atol=1e-5, rtol=0)
        first = torch.log_softmax(full[p - 1] / temperature, -1)[response[0]]
        assert abs(lp[i, 0].item() - first.item()) < 1e-5
        probs = torch.softmax(expected_logits / temperature, -1)
        assert_close(ent[i, :n], -(probs * probs.log()).sum(-1), atol=1e-4, rtol=1e-4)
    # the padded row (SHORT) really was padded, so its agreement above exercised the position ids
    assert enc.mask[0].eq(0).any()


def test_padded_row_equals_the_row_alone(tok, tiny_lm):
    enc, resp, rmask = _batch(tok, seed=3)
    with torch.no_grad():
        batch_lp = response_logprobs(tiny_lm, enc.ids, enc.mask, resp, rmask, 1.0)[0]
        alone = encode_prompts(tok, [SHORT], max_prompt_tokens=4096)
        solo_lp = response_logprobs(tiny_lm, alone.ids, alone.mask, resp[:1], rmask[:1], 1.0)[0]
    n = int(rmask[0].sum())
    assert alone.mask.all()  # no padding at all when alone
    assert_close(batch_lp[0, :n], solo_lp[0, :n], atol=1e-5, rtol=0)


def test_response_values_read_the_state_before_each_token(tok, tiny_model_dir):
    critic = load_sequence_classifier(tiny_model_dir, pad_token_id=tok.pad_token_id).eval()
    enc, resp, rmask = _batch(tok, seed=1)
    with torch.no_grad():
        v = response_values(critic, enc.ids, enc.mask, resp, rmask)
        assert v.shape == resp.shape and v.dtype == torch.float32
        for i in range(2):
            prompt, response = _unpadded(enc, resp, rmask, i)
            hidden = critic.model(input_ids=torch.cat([prompt, response])[None]).last_hidden_state[0]
            p = len(prompt)
            expected = critic.score(hidden[p - 1 : p - 1 + len(response)]).squeeze(-1)
            assert_close(v[i, : len(response)], expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- sample_responses


def test_sample_responses_masks_and_texts(eos_model_dir, prompts_file):
    from rlaif.data.prompts import load_prompts

    rows = load_prompts(prompts_file)
    tok = load_tokenizer(eos_model_dir, padding_side="left")
    model = load_causal_lm(eos_model_dir)
    torch.manual_seed(0)
    rollout, n_trunc = sample_responses(model, tok, rows, max_new_tokens=8, temperature=0.7, batch_size=3,
                                        max_prompt_tokens=4096)
    assert n_trunc == 0 and len(rollout) == len(rows)
    assert rollout.prompts == [r.text for r in rows]  # the real questions, never recovered from padded ids
    enc = encode_prompts(tok, rows, 4096)
    assert torch.equal(rollout.prompt_ids, enc.ids) and torch.equal(rollout.prompt_mask, enc.mask)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    lengths = rollout.response_mask.sum(1)
    assert rollout.response_mask[:, 0].all() and (lengths >= 1).all()
    assert rollout.ended_with_eos.any() and not rollout.ended_with_eos.all(), lengths.tolist()
    for i in range(len(rows)):
        n = int(lengths[i])
        ids = rollout.response_ids[i]
        assert rollout.response_mask[i, :n].all() and not rollout.response_mask[i, n:].any()
        assert (ids[n:] == pad).all()
        assert (ids[: n - 1] != eos).all()
        assert bool(ids[n - 1] == eos) == bool(rollout.ended_with_eos[i])
        if not rollout.ended_with_eos[i]:
            assert n == 8  # ran out of budget
        expected = tok.decode(ids[:n], skip_special_tokens=True).strip()
        assert rollout.responses[i] == expected
        assert "<|im_end|>" not in rollout.responses[i]
    # select keeps rows aligned
    sub = rollout.select([2, 0])
    assert sub.prompts == [rows[2].text, rows[0].text]
    assert torch.equal(sub.response_ids[1], rollout.response_ids[0])


def test_scores_taken_while_sampling_equal_a_scoring_pass(eos_model_dir, prompts_file):
    """keep_logprobs: the log-probs (and a shared head's values) taken during generate equal one full scoring
    pass over the finished rollouts at every valid position — prompts of several lengths, chunks of different
    widths, answers that end with EOS and answers that run out of budget; select() keeps them aligned."""
    from rlaif.data.prompts import load_prompts
    from rlaif.rollout.scoring import response_logprobs_and_values

    rows = load_prompts(prompts_file)
    tok = load_tokenizer(eos_model_dir, padding_side="left")
    model = load_causal_lm(eos_model_dir)
    head = torch.nn.Linear(model.config.hidden_size, 1)
    torch.manual_seed(0)
    rollout, _ = sample_responses(model, tok, rows, max_new_tokens=8, temperature=0.7, batch_size=3,
                                  max_prompt_tokens=4096, keep_logprobs=True, value_head=head)
    assert rollout.ended_with_eos.any() and not rollout.ended_with_eos.all()
    assert rollout.logprobs.shape == rollout.values.shape == rollout.response_ids.shape
    with torch.no_grad():
        lp, _, _, v = response_logprobs_and_values(model, head, *rollout.model_inputs(list(range(len(rows))), "cpu"),
                                                   temperature=0.7)
    m = rollout.response_mask
    assert_close(rollout.logprobs[m], lp[m], rtol=1e-4, atol=1e-4)
    assert_close(rollout.values[m], v[m], rtol=1e-4, atol=1e-4)
    assert (rollout.logprobs[m] < 0).all()
    sub = rollout.select([2, 0])
    assert torch.equal(sub.logprobs[1], rollout.logprobs[0]) and torch.equal(sub.values[0], rollout.values[2])

    plain, _ = sample_responses(model, tok, rows[:2], max_new_tokens=4, temperature=0.7)
    assert plain.logprobs is None and plain.values is None  # off by default
    assert not model.get_output_embeddings()._forward_hooks  # the hooks are gone after sampling


def test_sampling_draws_from_softmax_over_temperature_and_respects_min_new_tokens(eos_model_dir):
    """generate + DrawByInverseCdf: over 1,200 answers to one prompt, the share whose first token is EOS is
    within 5 standard errors of the model's p(EOS) at temperature 0.7 (about 0.16 for this tiny model);
    with min_new_tokens=1 (the default) no answer ends at its first token."""
    tok = load_tokenizer(eos_model_dir, padding_side="left")
    model = load_causal_lm(eos_model_dir).eval()
    rows = [SHORT] * 1200
    enc = encode_prompts(tok, [SHORT], 512)
    with torch.no_grad():
        first = model(input_ids=enc.ids, attention_mask=enc.mask).logits[0, -1]
    p_eos = float(torch.softmax(first.double() / 0.7, dim=-1)[tok.eos_token_id])
    assert 0.05 < p_eos < 0.5
    torch.manual_seed(0)
    free, _ = sample_responses(model, tok, rows, max_new_tokens=1, min_new_tokens=0, temperature=0.7,
                               batch_size=300)
    share = float(free.ended_with_eos.double().mean())
    assert abs(share - p_eos) <= 5 * (p_eos * (1 - p_eos) / len(rows)) ** 0.5, (share, p_eos)
    held, _ = sample_responses(model, tok, rows[:300], max_new_tokens=2, temperature=0.7, batch_size=300)
    assert not (held.response_ids[:, 0] == tok.eos_token_id).any()


@pytest.mark.parametrize("temperature, top_p", [(0.7, 1.0), (1.0, 0.9), (0.0, 1.0)])
def test_the_models_own_generation_config_does_not_change_what_is_sampled(eos_model_dir, prompts_file, caplog,
                                                                          temperature, top_p):
    """A hub model's generation_config with logits processors (repetition_penalty, no_repeat_ngram_size,
    bad_words_ids) would make generate sample another distribution than softmax(logits / T), the one scoring
    reads: rollouts switch them off, so the same seeds give the same answers with or without them."""
    from rlaif.data.prompts import load_prompts

    rows = load_prompts(prompts_file)
    tok = load_tokenizer(eos_model_dir, padding_side="left")
    model = load_causal_lm(eos_model_dir)

    def draw():
        torch.manual_seed(0)
        return sample_responses(model, tok, rows, max_new_tokens=12, temperature=temperature, top_p=top_p,
                                batch_size=8, max_prompt_tokens=4096)[0].response_ids

    plain = draw()
    g = model.generation_config
    g.repetition_penalty, g.no_repeat_ngram_size, g.bad_words_ids = 3.0, 1, [[int(plain[0, 0])]]
    with caplog.at_level("WARNING", logger="rlaif.rollout"):
        assert torch.equal(draw(), plain)
    assert "repetition_penalty=3.0" in caplog.text and "no_repeat_ngram_size=1" in caplog.text
    # the check is not vacuous: transformers does apply them when they are not switched off
    torch.manual_seed(0)
    enc = encode_prompts(tok, rows, 4096)
    out = model.generate(input_ids=enc.ids, attention_mask=enc.mask, max_new_tokens=12, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    assert not (out[:, enc.ids.shape[1]:][:, 0] == plain[0, 0]).any()  # the banned token is never picked
