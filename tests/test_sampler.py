"""The rollout sampler (honing.train.sampler): greedy sampling equals the evaluation's greedy generation
(the KV cache, left padding and the prompt shared by its G samples change nothing), and sampling is a
function of the generator's seed alone (resume samples what the uninterrupted run did)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

from honing.data.conversation import Message
from honing.data.render import render_prompt
from honing.evaluate.generation import generate, stop_token_ids
from honing.train.sampler import SamplingParams, TorchSampler, next_tokens

PROMPTS = [[Message("user", "What is 3 plus 4?")],
           [Message("system", "Answer in one word."), Message("user", "Name a colour of the sky at noon, please.")]]


@pytest.fixture(scope="module")
def model_and_sampler(smol_tokenizer):
    model = make_tiny_llama(seed=5).eval()
    sampler = TorchSampler(stop_token_ids(smol_tokenizer), smol_tokenizer.pad_token_id or smol_tokenizer.eos_token_id)
    ids = [render_prompt(smol_tokenizer, p) for p in PROMPTS]
    return model, sampler, ids


def test_greedy_samples_equal_greedy_generation(model_and_sampler, smol_tokenizer):
    model, sampler, ids = model_and_sampler
    out = sampler.sample(model, ids, 3, SamplingParams(12, temperature=0.0), torch.Generator().manual_seed(0))
    reference = generate(model, smol_tokenizer, PROMPTS, max_new_tokens=12, share_prefix=False)
    for group, text in zip(out, reference.texts):
        assert group[0] == group[1] == group[2]  # the shared prefix cache gives each copy the same state
        assert smol_tokenizer.decode(group[0], skip_special_tokens=True).strip() == text
    # Each prompt alone (no left padding) samples the same tokens as in the padded batch.
    for i, p in enumerate(ids):
        alone = sampler.sample(model, [p], 1, SamplingParams(12, 0.0), torch.Generator().manual_seed(0))
        assert alone[0][0] == out[i][0]


def test_sampling_is_a_function_of_the_seed(model_and_sampler):
    model, sampler, ids = model_and_sampler
    params = SamplingParams(10, temperature=1.0, top_p=0.9)
    a = sampler.sample(model, ids, 4, params, torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global RNG plays no part
    b = sampler.sample(model, ids, 4, params, torch.Generator().manual_seed(7))
    c = sampler.sample(model, ids, 4, params, torch.Generator().manual_seed(8))
    assert a == b
    assert a != c
    assert all(len(s) <= 10 for g in a for s in g)
    assert len({tuple(s) for s in a[0]}) > 1  # temperature 1 on a random model: the 4 samples differ


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(next_tokens(logits, SamplingParams(1, 1.0, top_p=0.75), g)) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.75; tokens 2 and 3 are never drawn
    assert int(next_tokens(logits, SamplingParams(1, 0.0), g)) == 0
