"""NLI scorers (ragtrain.judges.nli): one `scores` / `entails` interface over a pair
classifier, a TRUE-style T5 and a causal LM's yes/no answer, on tiny random models built
here (a word-level tokenizer for the classifier and the T5, the project's tiny Llama with
SmolLM2's tokenizer for the LLM)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from ragtrain.judges.nli import (
    NLI_DEFAULTS,
    PROMPTS,
    ClassifierNLI,
    entailment_index,
    load_nli,
    load_template,
)

# fmt: off
WORDS = ["the", "a", "cat", "dog", "bird", "sat", "ran", "flew", "on", "in", "over", "mat",
         "park", "tree", "is", "was", "an", "animal", "small", "big", "red", "green", "yes",
         "no", "1", "0", "premise:", "hypothesis:"]
# fmt: on
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>"]
NLI_LABELS = {0: "neutral", 1: "entailment", 2: "contradiction"}

PAIRS = [
    ("the cat sat on the mat", "a cat sat"),
    ("the dog ran in the park over the green tree", "the dog is an animal"),
    ("a bird flew", "a big red bird flew over the tree"),
    ("the small cat was in the tree", "no"),
    ("green", "the bird sat on the mat in the park"),
]


# ---- models built here ---------------------------------------------------------------


def word_tokenizer(folder: Path, words=WORDS, pairs: bool = True):
    """A whitespace word-level tokenizer: [CLS] A [SEP] B [SEP] (pairs) or A </s> (T5)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*SPECIALS, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if pairs:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        **({"cls_token": "[CLS]", "sep_token": "[SEP]"} if pairs else {"eos_token": "</s>"}),
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_classifier(folder: Path, labels=NLI_LABELS, bias=None, seed: int = 0) -> Path:
    """A 2-layer BERT pair classifier; with `bias`, a zero classifier weight, so that
    the label probabilities are softmax(bias) whatever the input."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = word_tokenizer(folder)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=len(labels),
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    if bias is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor(bias, dtype=torch.float))
    model.save_pretrained(folder)
    return folder


def tiny_t5(folder: Path, words=WORDS, seed: int = 0) -> Path:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = word_tokenizer(folder, words, pairs=False)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("nli-classifier"))


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    return tiny_t5(tmp_path_factory.mktemp("nli-t5"))


def assert_batched_equals_alone(scorer, pairs=PAIRS, batch_size: int = 2):
    premises, hypotheses = map(list, zip(*pairs, strict=True))
    scorer.batch_size = batch_size
    batched = scorer.scores(premises, hypotheses)
    alone = [scorer.entails(p, h) for p, h in pairs]
    assert len(batched) == len(pairs)
    assert all(0.0 <= s <= 1.0 for s in batched)
    assert batched == pytest.approx(alone, abs=1e-5)
    assert scorer.scores(premises, hypotheses) == batched  # deterministic
    assert len(set(batched)) > 1, "a random model should score the pairs differently"
    return batched


# ---- without a model -----------------------------------------------------------------


def test_an_unknown_scorer_is_an_error_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown scorer 'bert'.*classifier, seq2seq, llm"):
        load_nli({"scorer": "bert", "path": "."})
    with pytest.raises(ValueError, match="unknown scorer None"):
        load_nli({"path": "."})


def test_a_missing_path_or_a_bad_batch_size_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="`path`"):
        load_nli({"scorer": "classifier"})
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_nli({"scorer": "classifier", "path": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        load_nli({"scorer": "classifier", "path": str(tmp_path), "batch_size": 0})


def test_the_default_template_uses_premise_and_hypothesis():
    path, template = load_template(NLI_DEFAULTS["template"])
    assert path == PROMPTS / "nli_yes_no.jinja"
    text = template.render(premise="PREMISE-TEXT", hypothesis="HYPOTHESIS-TEXT")
    assert "PREMISE-TEXT" in text and "HYPOTHESIS-TEXT" in text


def test_a_template_missing_a_field_is_a_one_line_error_naming_file_and_field(tmp_path):
    bad = tmp_path / "no_hypothesis.jinja"
    bad.write_text("Passage: {{ premise }}\nIs it true? Yes or No.\n")
    # checked before any model loads: the path need not hold a model
    with pytest.raises(ValueError) as err:
        load_nli({"scorer": "llm", "path": str(tmp_path), "template": str(bad)})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{bad}: ") and "lacks the field hypothesis " in message
    extra = tmp_path / "extra.jinja"
    extra.write_text("{{ premise }} {{ hypothesis }} {{ question }}")
    with pytest.raises(ValueError, match=r"extra\.jinja: .*unknown field question"):
        load_template(extra)
    with pytest.raises(FileNotFoundError, match="missing_name"):
        load_template("missing_name")


def test_the_entailment_label_is_found_in_id2label_or_the_key_is_named():
    def config(labels):  # the two fields read of a transformers config
        return SimpleNamespace(num_labels=len(labels), id2label=labels)

    assert entailment_index(config(NLI_LABELS), None) == 1
    assert entailment_index(config({0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"}), None) == 0
    assert entailment_index(config({0: "not_entailment", 1: "entailment"}), None) == 1
    with pytest.raises(ValueError, match="set `entailment_index`"):
        entailment_index(config({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}), None)
    assert entailment_index(config({0: "LABEL_0", 1: "LABEL_1"}), 0) == 0
    with pytest.raises(ValueError, match=r"entailment_index must be an int in \[0, 3\)"):
        entailment_index(config(NLI_LABELS), 3)


# ---- classifier ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_classifier_reads_the_entailment_column(tmp_path):
    """Zero weights, bias 5 on label 1 ("entailment"): P = e^5 / (e^5 + 2) whatever the
    pair; the same model read at index 0 gives 1 / (e^5 + 2)."""
    folder = tiny_classifier(tmp_path, bias=[0.0, 5.0, 0.0])
    high, low = math.exp(5) / (math.exp(5) + 2), 1 / (math.exp(5) + 2)
    scorer = load_nli({"scorer": "classifier", "path": str(folder)})
    assert isinstance(scorer, ClassifierNLI) and scorer.entailment_index == 1
    assert scorer.scores(*map(list, zip(*PAIRS, strict=True))) == pytest.approx([high] * 5)
    other = load_nli({"scorer": "classifier", "path": str(folder), "entailment_index": 0})
    assert other.entails("the cat sat", "a cat") == pytest.approx(low)


@pytest.mark.slow
def test_a_classifier_without_an_entailment_label_needs_the_index(tmp_path):
    folder = tiny_classifier(tmp_path, labels={0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(ValueError, match="entailment_index"):
        load_nli({"scorer": "classifier", "path": str(folder)})


@pytest.mark.slow
def test_the_classifier_scores_a_batch_as_each_pair_alone(classifier_dir):
    scorer = load_nli({"scorer": "classifier", "path": str(classifier_dir)})
    assert_batched_equals_alone(scorer)


@pytest.mark.slow
def test_the_classifier_cuts_the_premise_and_keeps_the_hypothesis(classifier_dir):
    scorer = load_nli({"scorer": "classifier", "path": str(classifier_dir), "max_length": 12})
    premise = "the cat sat on the mat in the park"  # 9 words; room for 12 - 3 - 2 = 7
    longer = premise + " over the big red tree"
    assert scorer.entails(longer, "a cat") == pytest.approx(scorer.entails(premise, "a cat"))
    assert scorer.entails(premise, "a cat") != pytest.approx(scorer.entails(premise, "a dog"))


# ---- seq2seq -------------------------------------------------------------------------


@pytest.mark.slow
def test_seq2seq_renormalises_1_against_0_at_the_first_decoder_token(t5_dir):
    import torch

    scorer = load_nli({"scorer": "seq2seq", "path": str(t5_dir)})
    premise, hypothesis = PAIRS[1]
    enc = scorer.tokenizer(f"premise: {premise} hypothesis: {hypothesis}", return_tensors="pt")
    start = torch.tensor([[scorer.model.config.decoder_start_token_id]])
    with torch.no_grad():
        probs = scorer.model(**enc, decoder_input_ids=start).logits[0, 0].softmax(-1)
    one, zero = (scorer.tokenizer.convert_tokens_to_ids(t) for t in ("1", "0"))
    expected = (probs[one] / (probs[one] + probs[zero])).item()
    got = scorer.entails(premise, hypothesis)
    assert got == pytest.approx(expected, abs=1e-6)
    assert got != pytest.approx(probs[one].item(), abs=1e-3)  # not the whole-vocabulary P("1")
    # equal logits for "1" and "0": exactly one half, however likely other tokens are
    with torch.no_grad():
        scorer.model.lm_head.weight[[one, zero]] = 0.0
    assert scorer.scores(["a cat", "the dog ran"], ["a dog", "no"]) == pytest.approx([0.5, 0.5])


@pytest.mark.slow
def test_seq2seq_scores_a_batch_as_each_pair_alone(t5_dir):
    scorer = load_nli({"scorer": "seq2seq", "path": str(t5_dir)})
    assert_batched_equals_alone(scorer)


@pytest.mark.slow
def test_seq2seq_needs_1_and_0_as_single_tokens(tmp_path):
    folder = tiny_t5(tmp_path, words=[w for w in WORDS if w != "1"])  # "1" -> [UNK]
    with pytest.raises(ValueError, match=r"'1'.*one known token"):
        load_nli({"scorer": "seq2seq", "path": str(folder)})


# ---- llm yes / no --------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm_scorer(tiny_model):
    return load_nli({"scorer": "llm", "path": str(tiny_model), "batch_size": 3})


@pytest.mark.slow
def test_llm_scores_yes_against_no_at_the_next_token(llm_scorer):
    import torch

    scorer, tok = llm_scorer, llm_scorer.tokenizer
    premise, hypothesis = PAIRS[2]
    prompt = scorer.prompt(premise, hypothesis)
    assert prompt.endswith("<|im_start|>assistant\n")  # SmolLM2's chat template applied
    assert "a bird flew" in prompt and "over the tree" in prompt
    enc = tok(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        logp = scorer.model(**enc).logits[0, -1].float().log_softmax(-1)
    yes = [tok.convert_tokens_to_ids(t) for t in ("Yes", "ĠYes")]
    no = [tok.convert_tokens_to_ids(t) for t in ("No", "ĠNo")]
    assert sorted(yes) == scorer.yes and sorted(no) == scorer.no
    expected = torch.sigmoid(logp[yes].logsumexp(-1) - logp[no].logsumexp(-1)).item()
    assert scorer.entails(premise, hypothesis) == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_llm_scores_a_left_padded_batch_as_each_pair_alone(llm_scorer):
    assert_batched_equals_alone(llm_scorer, batch_size=3)


@pytest.mark.slow
def test_llm_equal_yes_and_no_logits_give_one_half(tiny_model):
    import torch

    scorer = load_nli({"scorer": "llm", "path": str(tiny_model)})
    with torch.no_grad():
        scorer.model.lm_head.weight[[*scorer.yes, *scorer.no]] = 0.0
    assert scorer.scores(["a cat sat", "the dog"], ["a cat", "a bird"]) == pytest.approx([0.5, 0.5])


@pytest.mark.slow
def test_llm_cuts_the_premise_to_fit_max_length(tiny_model):
    probe = load_nli({"scorer": "llm", "path": str(tiny_model)})
    overhead = len(probe.tokenizer(probe.prompt("", "a cat"), add_special_tokens=False).input_ids)
    scorer = load_nli({"scorer": "llm", "path": str(tiny_model), "max_length": overhead + 6})
    premise = " ".join(["the cat sat on the mat"] * 3)
    longer = premise + " and the dog ran in the park"
    assert scorer.entails(longer, "a cat") == pytest.approx(scorer.entails(premise, "a cat"))
    assert scorer.entails(premise, "a cat") != pytest.approx(probe.entails(premise, "a cat"))


@pytest.mark.slow
def test_llm_left_padding_keeps_absolute_positions(tiny_model, tmp_path):
    """GPT-2 learns absolute positions (unlike RoPE, a shift changes its output): a
    left-padded row must still count positions from its first real token."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.save_pretrained(tmp_path)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=512)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    scorer = load_nli({"scorer": "llm", "path": str(tmp_path), "batch_size": 3})
    assert_batched_equals_alone(scorer, batch_size=3)
