"""A trained model folder (safetensors) written as one GGUF file, for llama.cpp / ollama.

The weights are renamed to llama.cpp's tensor names and the query and key projections
permuted into its rotary layout (the inverse of what a GGUF reader undoes: transformers'
GGUF loader reads the file back into the same model, which the tests check). The
tokenizer goes in as llama.cpp's `gpt2` (byte-level BPE) vocabulary: its tokens, their
types, the merges, the special token ids and the chat template.

Llama-architecture models only (SmolLM2, Llama 2/3 without rope scaling, TinyLlama):
another architecture, or a setting the file format would drop (biases, rope scaling), is
an error that says so rather than a file that runs wrong.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ragtrain.core.records import atomic_path

log = logging.getLogger(__name__)

# `export_type` -> how the 2-D weights are stored (norms stay F32, as llama.cpp keeps them).
EXPORT_TYPES = ("f32", "f16", "bf16", "q8_0")
EXPORT_DEFAULTS = {"export": None, "export_type": "f16"}
EXPORT_DOCS = {
    "export": "`gguf`: also write the model as one GGUF file, `results/<run>/exports/<name>.gguf`"
    " (llama.cpp, ollama; Llama-architecture models); null: none",
    "export_type": f"the GGUF file's weight type: {', '.join(EXPORT_TYPES)}",
}

# Hugging Face Llama parameter names -> llama.cpp's (`{i}`: the layer).
TENSOR_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_TENSOR_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
# llama.cpp's token types.
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4


class ExportError(ValueError):
    """A model that cannot be written as GGUF, and why."""


def gguf_tensor_name(hf_name: str) -> str:
    if hf_name in TENSOR_NAMES:
        return TENSOR_NAMES[hf_name]
    parts = hf_name.split(".", 3)  # model, layers, i, rest
    if parts[:2] == ["model", "layers"] and parts[3] in LAYER_TENSOR_NAMES:
        return f"blk.{parts[2]}.{LAYER_TENSOR_NAMES[parts[3]]}"
    raise ExportError(f"no GGUF name for the weight {hf_name!r} (a Llama model's weights only)")


def rotary_permuted(weight: np.ndarray, n_head: int) -> np.ndarray:
    """A query or key projection in llama.cpp's rotary layout: HF rotates each head's two
    halves, llama.cpp its interleaved pairs, so each head's rows go from (2, d/2) to
    (d/2, 2) order."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _check_architecture(config: dict, model_dir: Path) -> None:
    where = f"{model_dir}/config.json"
    if config.get("model_type") not in ("llama", "mistral") or config.get("architectures") not in (
        None,
        ["LlamaForCausalLM"],
        ["MistralForCausalLM"],
    ):
        raise ExportError(
            f"{where}: GGUF export writes Llama-architecture models; this is"
            f" {config.get('model_type')!r} ({config.get('architectures')})"
        )
    for setting in ("attention_bias", "mlp_bias"):
        if config.get(setting):
            raise ExportError(f"{where}: {setting} is on, which the llama GGUF layout drops")
    rope = _rope(config)
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ExportError(f"{where}: rope scaling {rope!r} is not written to GGUF here")


def _rope(config: dict) -> dict:
    """The rotary settings: transformers 5 writes `rope_parameters`, older folders
    `rope_theta` and `rope_scaling`."""
    return config.get("rope_parameters") or {
        "rope_theta": config.get("rope_theta", 10000.0),
        **(config.get("rope_scaling") or {}),
    }


def _tokenizer_fields(model_dir: Path) -> dict:
    """llama.cpp's `gpt2` vocabulary from the folder's fast tokenizer (tokenizer.json)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"{model_dir}: no tokenizer.json (a fast tokenizer is exported)")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(spec.get("pre_tokenizer"), dict):
        raise ExportError(
            f"{path}: a byte-level BPE tokenizer is exported; this is {model.get('type')!r}"
        )
    vocab: dict[str, int] = dict(model["vocab"])
    special = set()
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        if added.get("special"):
            special.add(added["id"])
    added_ids = {a["id"] for a in spec.get("added_tokens", [])}
    tokens = [None] * (max(vocab.values()) + 1)
    for text, index in vocab.items():
        tokens[index] = text
    # Ids nothing names (a vocabulary padded to a multiple) get llama.cpp's filler.
    types = []
    for index, text in enumerate(tokens):
        if text is None:
            tokens[index] = f"[PAD{index}]"
            types.append(USER_DEFINED)
        elif index in special:
            types.append(CONTROL)
        elif index in added_ids:
            types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges}


def _store(weight: np.ndarray, export_type: str):
    """A weight as the file stores it, and its GGML type (None: as the array's dtype)."""
    import gguf

    if weight.ndim == 1 or export_type == "f32":
        return weight.astype(np.float32), None
    if export_type == "f16":
        return weight.astype(np.float16), None
    kind = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
    qtype = kind[export_type]
    if weight.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return weight.astype(np.float16), None  # rows not in whole blocks: f16, as llama.cpp does
    return gguf.quants.quantize(weight.astype(np.float32), qtype), qtype


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def export_gguf(model_dir: str | Path, out_path: str | Path, export_type: str = "f16") -> dict:
    """Write `model_dir` as one GGUF file at `out_path` (complete or absent); return its
    stats."""
    import gguf
    import torch
    from safetensors import safe_open
    from transformers import AutoTokenizer

    model_dir, out_path = Path(model_dir), Path(out_path)
    if export_type not in EXPORT_TYPES:
        raise ExportError(
            f"export_type: expected one of {', '.join(EXPORT_TYPES)}, got {export_type!r}"
        )
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    _check_architecture(config, model_dir)
    # A Llama folder (checked above): no code of its own to run.
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    vocab = _tokenizer_fields(model_dir)

    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    arch = "llama"
    with atomic_path(out_path, suffix=".gguf") as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_name(model_dir.name)
        writer.add_block_count(config["num_hidden_layers"])
        writer.add_context_length(config["max_position_embeddings"])
        writer.add_embedding_length(config["hidden_size"])
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_dimension_count(head_dim)
        if head_dim * n_head != config["hidden_size"]:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_rope_freq_base(float(_rope(config).get("rope_theta", 10000.0)))
        writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
        writer.add_vocab_size(config["vocab_size"])
        writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[export_type]))
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(vocab["tokens"])
        writer.add_token_types(vocab["types"])
        writer.add_token_merges(vocab["merges"])
        for name, token_id in (
            ("bos", tokenizer.bos_token_id),
            ("eos", tokenizer.eos_token_id),
            ("unk", tokenizer.unk_token_id),
            ("pad", tokenizer.pad_token_id),
        ):
            if token_id is not None:
                getattr(writer, f"add_{name}_token_id")(token_id)
        writer.add_add_bos_token(False)
        if tokenizer.chat_template:
            writer.add_chat_template(tokenizer.chat_template)

        n_weights = 0
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise ExportError(f"{model_dir}: no safetensors weights")
        tied = config.get("tie_word_embeddings", False)
        for file in files:
            with safe_open(file, framework="pt") as weights:
                for hf_name in weights.keys():  # noqa: SIM118 (not iterable)
                    if hf_name == "lm_head.weight" and tied:
                        continue  # llama.cpp ties to token_embd when output is absent
                    weight = weights.get_tensor(hf_name).to(torch.float32).numpy()
                    if hf_name.endswith("self_attn.q_proj.weight"):
                        weight = rotary_permuted(weight, n_head)
                    elif hf_name.endswith("self_attn.k_proj.weight"):
                        weight = rotary_permuted(weight, n_kv)
                    data, qtype = _store(weight, export_type)
                    writer.add_tensor(gguf_tensor_name(hf_name), data, raw_dtype=qtype)
                    n_weights += weight.size
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    stats = {
        "model": str(model_dir),
        "gguf": str(out_path),
        "export_type": export_type,
        "parameters": n_weights,
        "bytes": out_path.stat().st_size,
    }
    log.info("GGUF: %s", stats)
    return stats
