"""`quantization` (QLoRA): a 4-bit or 8-bit frozen base under LoRA for sft, dpo and ppo.

No GPU is here and bitsandbytes is not installed: these tests check the settings and their
errors (raised before anything loads), the BitsAndBytesConfig built (with CUDA and
bitsandbytes monkeypatched as present and transformers' BitsAndBytesConfig replaced by a
recording class), and the save path, whose merge onto the unquantized init model runs on
the CPU. The quantized load and training themselves run only on a GPU machine.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import yaml

from ragtrain.core.settings import with_defaults
from ragtrain.training import ppo, sft_dpo, toolkit
from tests.conftest import ROOT


class RecordingBnbConfig:
    """Stands in for transformers.BitsAndBytesConfig (which wants bitsandbytes): keeps its
    arguments."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


def _gpu_and_bitsandbytes(monkeypatch, cuda: bool = True, bnb: bool = True) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: (
            (object() if bnb else None) if name == "bitsandbytes" else find_spec(name, *a, **k)
        ),
    )
    # By name: the module in sys.modules now (loading a model may put a new one there).
    monkeypatch.setattr("transformers.BitsAndBytesConfig", RecordingBnbConfig)


def _sft(**node) -> dict:
    return with_defaults({"kind": "sft", **node}, sft_dpo.TRAIN_DEFAULTS)


def _one_line_error(params: dict, match: str) -> str:
    with pytest.raises(ValueError, match=match) as raised:
        toolkit.quantization_kwargs(params, torch.bfloat16)
    message = str(raised.value)
    assert message.startswith("quantization: ") and "\n" not in message
    return message


# ---------------------------------------------------------------- the key


def test_the_key_defaults_to_null_on_sft_dpo_and_ppo_and_the_schema_types_it():
    assert sft_dpo.TRAIN_DEFAULTS["sft"]["quantization"] is None
    assert sft_dpo.TRAIN_DEFAULTS["dpo"]["quantization"] is None
    assert ppo.PPO_DEFAULTS["quantization"] is None
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    models = schema["properties"]["models"]["additionalProperties"]["properties"]
    assert models["quantization"] == {"enum": ["4bit", "8bit", None]}


def test_null_gives_no_load_arguments_and_needs_no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert toolkit.quantization_kwargs(_sft(), torch.float32) == {}
    assert toolkit.quantization_kwargs(_sft(finetune="full"), torch.float32) == {}
    assert toolkit.quantization_kwargs(with_defaults({}, ppo.PPO_DEFAULTS, kinds=False), None) == {}


# ---------------------------------------------------------------- errors, before any load


def test_an_unknown_value_is_refused():
    _one_line_error(_sft(quantization="2bit"), r"expected null, '4bit' or '8bit', got '2bit'")


def test_full_fine_tuning_is_refused(monkeypatch):
    _gpu_and_bitsandbytes(monkeypatch)
    message = _one_line_error(_sft(quantization="4bit", finetune="full"), "needs finetune: lora")
    assert "'full'" in message


def test_zero3_is_refused(monkeypatch):
    _gpu_and_bitsandbytes(monkeypatch)
    _one_line_error(_sft(quantization="4bit", deepspeed="zero3"), "deepspeed: zero3")


def test_it_needs_cuda(monkeypatch):
    _gpu_and_bitsandbytes(monkeypatch, cuda=False)
    _one_line_error(_sft(quantization="8bit"), "needs a CUDA GPU")


def test_on_a_machine_without_cuda_the_error_is_one_line_naming_the_node(monkeypatch, tmp_path):
    # What the train stage passes: the node's name (its output folder's).
    _gpu_and_bitsandbytes(monkeypatch, cuda=False)
    missing = tmp_path / "missing"
    with pytest.raises(ValueError) as raised:
        sft_dpo.train(
            {"kind": "sft", "name": "qlora_sft", "quantization": "4bit"},
            missing, missing / "train.jsonl", None, tmp_path / "out", tmp_path,
        )  # fmt: skip
    message = str(raised.value)
    assert message.startswith("models.qlora_sft.quantization: 4bit needs a CUDA GPU")
    assert "\n" not in message and not (tmp_path / "out").exists()


def test_it_needs_bitsandbytes(monkeypatch):
    _gpu_and_bitsandbytes(monkeypatch, bnb=False)
    message = _one_line_error(_sft(quantization="4bit"), "needs the bitsandbytes package")
    assert "pip install -e '.[gpu]'" in message


def test_the_gpu_free_checks_fail_without_a_gpu_or_bitsandbytes(monkeypatch):
    """The config conflicts are found first, with neither a GPU nor bitsandbytes."""
    _gpu_and_bitsandbytes(monkeypatch, cuda=False, bnb=False)
    toolkit.check_quantization(_sft(quantization="4bit", deepspeed="zero2"))
    with pytest.raises(ValueError, match="needs finetune: lora"):
        toolkit.check_quantization(_sft(quantization="4bit", finetune="full"))
    with pytest.raises(ValueError, match="zero3"):
        toolkit.check_quantization(_sft(quantization="8bit", deepspeed="zero3"))


def test_sft_training_stops_before_it_reads_or_loads_anything(tmp_path):
    params = {"kind": "sft", "quantization": "4bit", "finetune": "full"}
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=r"^quantization: 4bit needs finetune: lora"):
        sft_dpo.train(params, missing, missing / "train.jsonl", None, tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


def test_ppo_checks_the_value_and_its_model_stops_before_the_load(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"^quantization: expected null"):
        ppo.check(with_defaults({"quantization": "4-bit"}, ppo.PPO_DEFAULTS, kinds=False))
    ppo.check(with_defaults({"quantization": "4bit"}, ppo.PPO_DEFAULTS, kinds=False))
    from ragtrain.training.ppo_model import ActorCritic

    _gpu_and_bitsandbytes(monkeypatch, cuda=False)
    params = with_defaults({"quantization": "4bit"}, ppo.PPO_DEFAULTS, kinds=False)
    with pytest.raises(ValueError, match=r"^quantization: 4bit needs a CUDA GPU"):
        ActorCritic(tmp_path / "missing", params, "cpu", torch.float32)


# ---------------------------------------------------------------- the config built


def test_4bit_is_qlora_nf4_with_double_quantization_in_the_compute_dtype(monkeypatch):
    _gpu_and_bitsandbytes(monkeypatch)
    kwargs = toolkit.quantization_kwargs(_sft(quantization="4bit"), torch.bfloat16)
    assert list(kwargs) == ["quantization_config"]
    config = kwargs["quantization_config"]
    assert isinstance(config, RecordingBnbConfig)
    assert config.kwargs == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": torch.bfloat16,
    }


def test_8bit_loads_in_8bit(monkeypatch):
    _gpu_and_bitsandbytes(monkeypatch)
    params = with_defaults({"quantization": "8bit"}, ppo.PPO_DEFAULTS, kinds=False)
    config = toolkit.quantization_kwargs(params, torch.bfloat16)["quantization_config"]
    assert config.kwargs == {"load_in_8bit": True}


# ---------------------------------------------------------------- saving


class _Tokenizer:
    def save_pretrained(self, folder):
        (folder / "tokenizer.json").write_text("{}")


def _tiny_llama(folder):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(folder)


def _trained_adapter(model):
    """A LoRA adapter (the sft default: all-linear) on `model` whose weights are changed
    from their start (where lora_B is 0, a no-op)."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, toolkit.lora_config(toolkit.COMMON["lora"]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return peft_model


def test_a_quantized_base_s_adapter_is_merged_onto_the_unquantized_init_model(tmp_path):
    """The saved folder is a plain model: the init weights plus the merged LoRA delta, as
    peft's merge_and_unload gives on an unquantized copy, not the trained model's own
    (quantized) base weights, which are perturbed here to stand in for them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    init = tmp_path / "init"
    _tiny_llama(init)
    trained = _trained_adapter(AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32))
    with torch.no_grad():  # the trained model's base differs from init (as 4-bit weights do)
        for name, param in trained.named_parameters():
            if "lora_" not in name:
                param.add_(1.0)
    folder = tmp_path / "model"
    folder.mkdir()
    toolkit.save_model(
        trained, _Tokenizer(), folder, torch.float32, init, adapter=True, quantized=True
    )

    assert (folder / "adapter" / "adapter_config.json").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    saved = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    expected = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32), folder / "adapter"
    ).merge_and_unload()
    base = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32).state_dict()
    saved_state, expected_state = saved.state_dict(), expected.state_dict()
    assert saved_state.keys() == expected_state.keys()
    changed = 0
    for name, weight in saved_state.items():
        torch.testing.assert_close(weight, expected_state[name], rtol=0, atol=1e-6)
        changed += not torch.equal(weight, base[name])
    # The LoRA delta landed on the linear layers (7 per layer), and only there.
    assert changed == 2 * 7


def test_the_merge_is_in_the_training_dtype(tmp_path):
    from transformers import AutoModelForCausalLM

    init = tmp_path / "init"
    _tiny_llama(init)
    trained = _trained_adapter(AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32))
    trained.save_pretrained(tmp_path / "adapter")
    merged = toolkit.merge_onto_init(init, tmp_path / "adapter", torch.bfloat16)
    assert not hasattr(merged, "peft_config")
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}


def test_a_quantized_base_is_saved_with_its_adapter_only(tmp_path):
    with pytest.raises(ValueError, match=r"^quantization: "):
        toolkit.save_model(
            None, _Tokenizer(), tmp_path, torch.float32, tmp_path, adapter=False, quantized=True
        )


@pytest.mark.parametrize(
    ("model", "change", "message"),
    [
        ("sft", {"quantization": "4bit", "finetune": "full"}, "needs finetune: lora"),
        ("rm", {"quantization": "4bit"}, "a reward model loads its init model unquantized"),
    ],
)
def test_a_config_with_a_misplaced_quantization_fails_before_any_job(model, change, message):
    from ragtrain.graph.config import ConfigError, prepare

    config = yaml.safe_load((ROOT / "config/rl.yaml").read_text())
    config["models"][model].update(change)
    with pytest.raises(ConfigError, match=f"models.{model}.quantization") as e:
        prepare(config)
    assert message in str(e.value)
