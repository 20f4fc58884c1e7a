"""The HF backend on the tiny model (vLLM is covered end to end in test_workflow)."""

import json

import pytest

from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.engine import (
    HFGenerator,
    Sampling,
    _cut_at_stop,
    device_defaults,
    load_generator,
)
from ragtrain.graph.kinds import GENERATION_DEFAULTS
from tests.conftest import ROOT

CONVERSATIONS = [
    [{"role": "user", "content": "Where was Marel Dovant born?"}],
    [
        {
            "role": "user",
            "content": "A much longer question, so that this prompt needs left padding "
            "when it shares a batch with the short one above: who founded Orvane Systems?",
        }
    ],
    [{"role": "user", "content": "Hi"}],
]


def hf(model, **overrides):
    return HFGenerator(str(model), device_defaults({**GENERATION_DEFAULTS, **overrides}))


@pytest.mark.slow
def test_batched_greedy_equals_one_by_one(tiny_model):
    """Left padding must not change greedy answers."""
    sampling = Sampling(max_new_tokens=6)
    batched = hf(tiny_model, batch_size=3).chat(CONVERSATIONS, sampling)
    single = hf(tiny_model, batch_size=1).chat(CONVERSATIONS, sampling)
    assert [c[0].text for c in batched] == [c[0].text for c in single]
    assert all(0 < c[0].num_tokens <= 6 for c in batched)


@pytest.mark.slow
def test_n_samples_per_prompt_and_throughput(tiny_model):
    generator = hf(tiny_model, batch_size=2)
    out = generator.chat(CONVERSATIONS, Sampling(max_new_tokens=4, temperature=1.0, n=3))
    assert [len(c) for c in out] == [3, 3, 3]
    assert generator.throughput.tokens == sum(x.num_tokens for c in out for x in c)
    assert generator.throughput.tokens_per_second > 0


@pytest.mark.slow
def test_greedy_n_repeats_the_one_answer_and_min_tokens_forces_length(tiny_model):
    out = hf(tiny_model).chat(CONVERSATIONS[:1], Sampling(max_new_tokens=5, n=2, min_new_tokens=5))
    assert len(out[0]) == 2 and out[0][0] == out[0][1]
    assert out[0][0].num_tokens == 5


def test_device_defaults_on_cpu():
    filled = device_defaults(GENERATION_DEFAULTS)
    assert filled["dtype"] == "float32"
    assert filled["enforce_eager"] is True
    assert filled["gpu_memory_utilization"] == 0.3
    assert device_defaults({**GENERATION_DEFAULTS, "dtype": "bfloat16"})["dtype"] == "bfloat16"


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"generation\.backend"):
        load_generator("x", {**GENERATION_DEFAULTS, "backend": "tgi"})


def test_rag_prompt_lists_docs_and_question():
    template = PromptTemplate(ROOT / "resources/prompts/rag.jinja")
    text = template.render(
        {
            "question": "Where was Marel Dovant born?",
            "docs": [
                {"title": "Marel Dovant", "text": "Born in Kesh."},
                {"title": "K", "text": "x"},
            ],
        }
    )
    assert "Document [1] (Title: Marel Dovant) Born in Kesh." in text
    assert "Document [2] (Title: K) x" in text
    assert text.endswith("Question: Where was Marel Dovant born?")
    assert "I don't know" in text


def test_template_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("line one\n{% for d in docs %}\n")
    with pytest.raises(ValueError, match=rf"{bad}:\d+: template syntax error"):
        PromptTemplate(bad)


@pytest.mark.slow
def test_prefix_is_continued_and_its_continuation_kept_raw(tiny_model):
    """The answer goes on after the prefix; joining continuations gives the longer one."""
    generator = hf(tiny_model)
    conversation = CONVERSATIONS[:1]
    prefix = "The answer is"
    [[first]] = generator.chat(conversation, Sampling(max_new_tokens=4), prefixes=[prefix])
    [[second]] = generator.chat(
        conversation, Sampling(max_new_tokens=4), prefixes=[prefix + first.text]
    )
    [[whole]] = generator.chat(conversation, Sampling(max_new_tokens=8), prefixes=[prefix])
    [[plain]] = generator.chat(conversation, Sampling(max_new_tokens=8))
    assert first.text + second.text == whole.text
    assert whole.text != plain.text  # the prefix is in the prompt
    # Raw: leading spaces kept (stripped without a prefix, as before).
    assert first.text == generator.tokenizer.decode(first.token_ids, skip_special_tokens=True)
    assert first.text != first.text.lstrip()
    assert plain.text == plain.text.strip()
    assert first.finish_reason == whole.finish_reason == "length"


@pytest.mark.slow
def test_stop_strings_cut_the_text_after_the_first_stop(tiny_model):
    generator = hf(tiny_model, batch_size=2)
    sampling = Sampling(max_new_tokens=12, temperature=1.0, n=2, stop=("e", "zz"))
    for prefixes in (["x", "", "The "], None):
        out = generator.chat(CONVERSATIONS, sampling, seeds=[1, 2, 3], prefixes=prefixes)
        completions = [c for per_conversation in out for c in per_conversation]
        assert sum(c.finish_reason == "stop" for c in completions) >= 3
        for c in completions:
            if c.finish_reason == "stop":
                assert c.text.endswith("e") and "e" not in c.text[:-1], c
            else:
                assert "e" not in c.text and c.finish_reason in ("length", "eos"), c
    free = generator.chat(
        CONVERSATIONS, Sampling(max_new_tokens=12, temperature=1.0, n=2), seeds=[1, 2, 3]
    )
    # The same draws, only cut (the batch stops when all its rows have).
    for stopped, unstopped in zip(out, free, strict=True):
        for a, b in zip(stopped, unstopped, strict=True):
            assert b.text.startswith(a.text) and a.num_tokens <= b.num_tokens


@pytest.mark.slow
def test_a_stop_string_is_searched_in_the_generated_text_only(tiny_model):
    """transformers' `stop_strings` would stop at once here: "is" (prefix) + " is"."""
    generator = hf(tiny_model)
    prefixes = ["The answer is"]
    [[free]] = generator.chat(CONVERSATIONS[:1], Sampling(max_new_tokens=6), prefixes=prefixes)
    assert free.text.startswith(" is is")  # the tiny model repeats its last word
    [[stopped]] = generator.chat(
        CONVERSATIONS[:1], Sampling(max_new_tokens=6, stop=("is is",)), prefixes=prefixes
    )
    assert (stopped.text, stopped.num_tokens, stopped.finish_reason) == (" is is", 2, "stop")


@pytest.mark.slow
def test_one_prefix_per_conversation(tiny_model):
    with pytest.raises(ValueError, match="prefixes"):
        hf(tiny_model).chat(CONVERSATIONS, Sampling(), prefixes=["a"])
    with pytest.raises(ValueError, match="seeds"):
        hf(tiny_model).chat(CONVERSATIONS, Sampling(), seeds=[1])


@pytest.mark.slow
def test_seeded_samples_do_not_depend_on_batching_or_order(tiny_model):
    """Each request's samples come from its own generators (seed + k for the k-th)."""
    import torch

    sampling = Sampling(max_new_tokens=6, temperature=1.0, top_p=0.9, top_k=50, n=3)
    seeds = [11, 22, 33]
    generator = hf(tiny_model, batch_size=3)
    batched = generator.chat(CONVERSATIONS, sampling, seeds)
    generator.batch_size = 2
    reordered = generator.chat(CONVERSATIONS[::-1], sampling, seeds[::-1])
    generator.batch_size = 1
    alone = generator.chat(CONVERSATIONS[1:2], sampling, seeds[1:2])
    texts = [[c.text for c in outs] for outs in batched]
    assert texts == [[c.text for c in outs] for outs in reordered[::-1]]
    assert texts[1] == [c.text for c in alone[0]]
    assert any(len(set(t)) > 1 for t in texts)  # sampled
    other = generator.chat(CONVERSATIONS, sampling, [12, 23, 34])
    assert [[c.text for c in outs] for outs in other] != texts
    # Without seeds, each request's seed comes from torch's stream (seeded when the
    # generator loads): the same state, the same samples, in batches of any size.
    torch.manual_seed(5)
    unseeded = generator.chat(CONVERSATIONS, sampling)
    generator.batch_size = 3
    torch.manual_seed(5)
    assert generator.chat(CONVERSATIONS, sampling) == unseeded


def test_seeded_sampler_applies_temperature_top_k_and_top_p():
    import torch

    from ragtrain.generation.engine import _seeded_sampler

    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).expand(4000, 4)

    def frequencies(**kw):
        sampler = _seeded_sampler(Sampling(**kw), list(range(4000)), torch.device("cpu"))[0]
        scores = sampler(None, logits)
        assert (scores.isinf().sum(dim=-1) == 3).all()  # one token left per row
        return (torch.bincount(scores.argmax(dim=-1), minlength=4) / 4000).tolist()

    full = frequencies(temperature=1.0)
    expected = logits[0].softmax(-1).tolist()
    assert all(abs(f - e) < 0.03 for f, e in zip(full, expected, strict=True))
    # top_p 0.7: the smallest set reaching 0.7 is tokens 2 and 1 (0.64 + 0.24).
    nucleus = frequencies(temperature=1.0, top_p=0.7)
    assert nucleus[0] == nucleus[3] == 0 and abs(nucleus[2] - 0.73) < 0.03
    assert frequencies(temperature=1.0, top_k=2) == nucleus
    cold = frequencies(temperature=0.1)
    assert cold[2] > 0.99


def test_cut_at_the_first_completed_stop():
    assert _cut_at_stop("a. b\nc. ", (". ", "\n")) == ("a. ", True)
    assert _cut_at_stop("ab\ncd. ", (". ", "\n")) == ("ab\n", True)
    assert _cut_at_stop("abc", (". ",)) == ("abc", False)
    assert _cut_at_stop("abc", ()) == ("abc", False)


def test_the_cpu_kv_cache_is_sized_to_full_length_sequences(tmp_path):
    from ragtrain.generation.engine import CPU_KV_SEQUENCES, cpu_kv_cache_gib

    # SmolLM2-135M's shape: 30 layers, 3 KV heads of 64: 46,080 bytes a token in float32.
    config = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
              "hidden_size": 576}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert 46080 * 2048 * CPU_KV_SEQUENCES / 2**30 == 1.40625
    assert cpu_kv_cache_gib(tmp_path, 2048) == 2
    assert cpu_kv_cache_gib(tmp_path, 256) == 1  # at least 1 GiB
