"""GPU training throughput and MFU: SFT and DPO, padding-free against padded batches.

Builds a Llama-style model of a given size from a config, with random weights (nothing
is downloaded), and a tokenizer-free set of random token sequences of variable length
(log-normal, median `--median-len`, clipped to `--min-len`..`--max-len`: RAG prompts with
short answers; SFT: the last `--answer-frac` of each sequence is the completion, the only
tokens with a loss; DPO: a shared prompt and two answers of their own lengths). On one
GPU in bf16 it trains for `--warmup` untimed and `--steps` timed steps of `--batch-size`
sequences (SFT) or pairs (DPO), each way:

- padded: the batch padded to its longest sequence, with an attention mask (TRL's
  default collation; DPO: chosen and rejected rows in one batch, as TRL's DPOTrainer);
- padding_free: the batch flattened into one row, `position_ids` restarting at each
  sequence and no attention mask (TRL's `SFTConfig(padding_free=True)`: TRL's own
  `DataCollatorForLanguageModeling(padding_free=True)` builds the SFT inputs). Under
  `sdpa`, transformers 5 turns the restarting position_ids into a block-diagonal causal
  mask (correct, but attention still spans the whole flattened row); `flash_attention_2`
  (needs flash-attn) runs true varlen kernels on the `cu_seq_lens` the collator adds, and
  `flex_attention` skips the masked-out blocks;
- packed (SFT, `--packing`): the same sequences packed as TRL's `SFTConfig(packing=True)`
  packs them (`pack_dataset`, best-fit decreasing) into rows of `--pack-length` tokens
  (default `--max-len`), `--batch-size` rows per step, each step's rows flattened with
  position_ids restarting at each sequence (TRL's collator on the rows' `seq_lengths`). The
  warm-up steps' sequences and the timed steps' are packed apart, so the timed steps hold
  the same real tokens; there are fewer of them, each fuller.

The loop is hand-written with TRL's losses (SFT: mean token cross-entropy over the
completion tokens, what SFTTrainer's `completion_only_loss` computes; DPO: TRL's
`sigmoid` loss on summed completion log-probs, beta 0.1), because TRL 1.16's DPOTrainer
turns `padding_free=True` off ("temporarily unavailable after a refactor"). Reference
model for DPO: the adapter disabled (`--lora`) or a frozen copy (full fine-tuning).
Optimizer: AdamW (fused on GPU), lr 1e-5; weights bf16 (`--weights fp32`: float32 master
weights under bf16 autocast, as ragtrain's full fine-tuning).

Throughput counts real tokens only (no padding): every token of every sequence, prompt
included; a DPO pair counts its prompt twice (it is run twice). Both modes see the same
sequences in the same order, so they process the same number of real tokens.

MFU = achieved model FLOP/s / the GPU's peak dense bf16 FLOP/s (H100 SXM and H200 989e12,
H100 NVL 835e12, H100 PCIe 756e12, A100 312e12; else `--peak-tflops`). Model FLOPs of a
sequence of s real tokens (PaLM's convention, per token, counting the attention over the
whole sequence, causal or not):

    training, full fine-tuning:  s * (6 N + 12 L d s)
    training, LoRA:              s * (4 N + 12 L d s)   (base weights get no gradient)
    forward only (DPO reference): s * (2 N + 4 L d s)

with N the parameters that take part in matmuls (every linear layer plus the LM head,
tied or not; not the input embedding table, a lookup, nor the norms), L layers, d the
hidden size (= heads x head_dim for these configs). DPO per pair = training FLOPs of the
chosen and the rejected sequence + forward FLOPs of both (reference). Padding and
gradient-checkpointing recomputation are not counted: it is model FLOPs utilisation,
not hardware FLOPs utilisation.

    python bench/gpu_train.py --size 1b [--lora] [--batch-size 8] [--steps 10] [--json out.json]
    python bench/gpu_train.py --size 8b --lora --grad-ckpt --attn sdpa flex_attention
    python bench/gpu_train.py --cpu-smoke      # a tiny model on CPU, float32: exercises the code
    python bench/gpu_train.py --packing --runs sft   # tokens/s packed against unpacked

Without a CUDA GPU (and without --cpu-smoke) it says so and exits 0; with --packing it
then measures the tiny model on CPU (--cpu-smoke's sizes) instead.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import sys
import time
from pathlib import Path

# name: hidden, layers, heads, kv heads, intermediate, vocab, tied embeddings
SIZES: dict[str, dict] = {
    # SmolLM2-135M
    "135m": dict(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, vocab=49152,
                 tied=True),
    # Llama-3.2-1B
    "1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=128256,
               tied=True),
    # Llama-3.2-3B
    "3b": dict(hidden=3072, layers=28, heads=24, kv_heads=8, intermediate=8192, vocab=128256,
               tied=True),
    # Llama-3.1-8B
    "8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=128256,
               tied=False),
    # the CPU smoke test's (ragtrain.training.models.build_tiny_llama's shape, a small vocabulary)
    "tiny": dict(hidden=128, layers=2, heads=2, kv_heads=2, intermediate=256, vocab=1024,
                 tied=True),
}  # fmt: skip

# Peak dense bf16 tensor-core FLOP/s by device name (no sparsity).
PEAKS = (("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12),
         ("A100", 312e12))  # fmt: skip
PAD = 0
BETA = 0.1


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for key, peak in PEAKS:
        if key in device_name:
            return peak
    return None


def model_shape(args) -> dict:
    shape = dict(SIZES[args.size])
    for key in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    shape["head_dim"] = shape["hidden"] // shape["heads"]
    return shape


def matmul_params(shape: dict) -> int:
    """N: parameters in matmuls (attention and MLP linears of every layer, the LM head)."""
    d, hd = shape["hidden"], shape["head_dim"]
    attn = d * shape["heads"] * hd * 2 + d * shape["kv_heads"] * hd * 2  # q, o; k, v
    mlp = 3 * d * shape["intermediate"]
    return shape["layers"] * (attn + mlp) + shape["vocab"] * d


def seq_flops(s: int, shape: dict, n: int, kind: str) -> float:
    """Model FLOPs of one sequence of s tokens: `train`, `train_lora` or `forward`."""
    attn = shape["layers"] * shape["hidden"] * s
    if kind == "forward":
        return s * (2 * n + 4 * attn)
    return s * ((4 if kind == "train_lora" else 6) * n + 12 * attn)


# ---------------------------------------------------------------- data


def draw_lengths(rng: random.Random, count: int, args) -> list[int]:
    """Log-normal lengths (sigma 0.6 around the median), clipped to [min_len, max_len]."""
    mu = math.log(args.median_len)
    return [
        max(args.min_len, min(args.max_len, round(rng.lognormvariate(mu, 0.6))))
        for _ in range(count)
    ]


def random_tokens(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(1, vocab) for _ in range(n)]


def make_sft_batches(args, vocab: int) -> list[list[dict]]:
    """Batches of {input_ids, labels}: labels -100 on the prompt, the tokens on the answer."""
    rng = random.Random(args.seed)
    batches = []
    for _ in range(args.warmup + args.steps):
        batch = []
        for s in draw_lengths(rng, args.batch_size, args):
            answer = max(1, round(s * args.answer_frac))
            ids = random_tokens(rng, s, vocab)
            batch.append({"input_ids": ids, "labels": [-100] * (s - answer) + ids[s - answer :]})
        batches.append(batch)
    return batches


def make_dpo_batches(args, vocab: int) -> list[list[dict]]:
    """Batches of pairs {prompt, chosen, rejected} (token lists): the prompt and the longer
    answer come from one drawn length; the other answer's length varies around it."""
    rng = random.Random(args.seed + 1)
    batches = []
    for _ in range(args.warmup + args.steps):
        batch = []
        for s in draw_lengths(rng, args.batch_size, args):
            answer = max(1, round(s * args.answer_frac))
            other = max(1, round(answer * rng.uniform(0.3, 1.0)))
            pair = {
                "prompt": random_tokens(rng, s - answer, vocab),
                "chosen": random_tokens(rng, answer, vocab),
                "rejected": random_tokens(rng, other, vocab),
            }
            if rng.random() < 0.5:
                pair["chosen"], pair["rejected"] = pair["rejected"], pair["chosen"]
            batch.append(pair)
        batches.append(batch)
    return batches


def dpo_rows(batch: list[dict]) -> list[dict]:
    """TRL's DPO layout: the chosen rows, then the rejected rows; loss on the answer only."""
    rows = []
    for field in ("chosen", "rejected"):
        for pair in batch:
            ids = pair["prompt"] + pair[field]
            rows.append({"input_ids": ids, "labels": [-100] * len(pair["prompt"]) + pair[field]})
    return rows


def collate(rows: list[dict], padding_free: bool, device) -> dict:
    """TRL's SFT collator (padded, or flattened with position_ids), moved to the device."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    out = DataCollatorForLanguageModeling(pad_token_id=PAD, padding_free=padding_free)(rows)
    moved = {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in out.items()}
    if padding_free:
        # the sequence index of every token, kept on the host side too for the DPO sums
        moved["_lengths"] = [len(r["input_ids"]) for r in rows]
    return moved


def real_tokens(rows: list[dict]) -> int:
    return sum(len(r["input_ids"]) for r in rows)


def pack_rows(sequences: list[dict], pack_length: int) -> list[dict]:
    """TRL's SFT packing: best-fit decreasing into rows of `pack_length` tokens, each row
    with its sequences' `seq_lengths` (what the collator restarts position_ids at)."""
    from datasets import Dataset
    from datasets.utils import logging as datasets_logging
    from trl.data_utils import pack_dataset

    shown = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        packed = pack_dataset(Dataset.from_list(sequences), pack_length, "bfd")
    finally:
        if shown:
            datasets_logging.enable_progress_bar()
    return [dict(row) for row in packed]


def pack_batches(batches: list[list[dict]], args) -> tuple[list[list[dict]], int]:
    """The warm-up and the timed batches' sequences packed apart (`pack_rows`),
    `batch_size` rows per step; returns the steps and how many of them are warm-up."""

    def steps(part: list[list[dict]]) -> list[list[dict]]:
        rows = pack_rows([s for batch in part for s in batch], args.pack_length)
        return [rows[i : i + args.batch_size] for i in range(0, len(rows), args.batch_size)]

    warmup = steps(batches[: args.warmup])
    return warmup + steps(batches[args.warmup :]), len(warmup)


# ---------------------------------------------------------------- model


def build_model(shape: dict, args, device, attn: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        head_dim=shape["head_dim"],
        max_position_embeddings=max(4096, args.max_len),
        tie_word_embeddings=shape["tied"],
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
        use_cache=False,
    )
    torch.manual_seed(args.seed)
    weights = torch.float32 if args.weights == "fp32" else args.dtype
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, attn_implementation=attn, dtype=weights)
    model.config.use_cache = False
    if args.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        if args.grad_ckpt:
            model.enable_input_require_grads()
    return model


# ---------------------------------------------------------------- losses


def sft_loss(model, inputs: dict):
    """Mean cross-entropy over the completion tokens (the model's own loss, as in TRL)."""
    kwargs = {k: v for k, v in inputs.items() if not k.startswith("_")}
    return model(**kwargs).loss


def sequence_logps(model, inputs: dict, n_rows: int):
    """Summed log-probs of the labelled (answer) tokens of each sequence."""
    import torch
    import torch.nn.functional as F

    kwargs = {k: v for k, v in inputs.items() if not k.startswith("_") and k != "labels"}
    logits = model(**kwargs).logits[:, :-1]
    labels = inputs["labels"][:, 1:]
    token_logp = -F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        labels.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(labels.shape)
    if "_lengths" not in inputs:  # padded: one row per sequence
        return token_logp.sum(-1)
    # flattened: sum each sequence's span (labels at sequence starts are -100)
    lengths = torch.tensor(inputs["_lengths"], device=token_logp.device)
    seq = torch.repeat_interleave(torch.arange(n_rows, device=token_logp.device), lengths)
    return torch.zeros(n_rows, device=token_logp.device).index_add(0, seq[1:], token_logp[0])


def dpo_loss(model, reference, inputs: dict, n_pairs: int):
    """TRL's sigmoid DPO loss; the reference's log-probs without gradient."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        if reference is None:  # LoRA: the base model is the reference
            with model.disable_adapter():
                ref = sequence_logps(model, inputs, 2 * n_pairs)
        else:
            ref = sequence_logps(reference, inputs, 2 * n_pairs)
    policy = sequence_logps(model, inputs, 2 * n_pairs)
    margin = (policy[:n_pairs] - ref[:n_pairs]) - (policy[n_pairs:] - ref[n_pairs:])
    return -F.logsigmoid(BETA * margin).mean()


# ---------------------------------------------------------------- runs


def run(kind: str, mode: str, attn: str, batches, shape: dict, args, device, warmup=None) -> dict:
    """Train on `batches` (the first `warmup` untimed, default --warmup) laid out by `mode`:
    padded, padding_free, or packed (rows of packed sequences, flattened)."""
    import torch

    padding_free = mode != "padded"
    warmup = args.warmup if warmup is None else warmup
    model = build_model(shape, args, device, attn)
    reference = None
    if kind == "dpo" and not args.lora:
        reference = build_model(shape, args, device, attn).eval().requires_grad_(False)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=args.dtype, enabled=args.dtype != torch.float32)
    n = matmul_params(shape)
    train_kind = "train_lora" if args.lora else "train"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = tokens = flops = padded_slots = examples = 0.0
    for step, batch in enumerate(batches):
        rows = batch if kind == "sft" else dpo_rows(batch)
        if step == warmup:
            if cuda:
                torch.cuda.synchronize()
            began = time.perf_counter()
        inputs = collate(rows, padding_free, device)
        with autocast:
            if kind == "sft":
                loss = sft_loss(model, inputs)
            else:
                loss = dpo_loss(model, reference, inputs, len(batch))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            # a packed row's sequences (its seq_lengths) count apart, as the FLOPs do
            lengths = [s for r in rows for s in r.get("seq_lengths", [len(r["input_ids"])])]
            examples += len(batch) if kind == "dpo" else len(lengths)
            tokens += sum(lengths)
            padded_slots += inputs["input_ids"].numel()
            flops += sum(seq_flops(s, shape, n, train_kind) for s in lengths)
            if kind == "dpo":
                flops += sum(seq_flops(s, shape, n, "forward") for s in lengths)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    result = {
        "run": kind,
        "mode": mode,
        "attn": attn,
        "steps": len(batches) - warmup,
        "seconds": seconds,
        "real_tokens": int(tokens),
        "tokens_per_s": tokens / seconds,
        "examples_per_s": examples / seconds,
        "padding_share": 1 - tokens / padded_slots,
        "model_tflops": flops / 1e12,
        "achieved_tflops": flops / seconds / 1e12,
        "mfu": flops / seconds / args.peak if args.peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "last_loss": float(loss.detach()),
    }
    del model, reference, optimizer, inputs, loss
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def loss_check(kind: str, attn: str, batch, shape: dict, args, device, packed=False) -> float:
    """|padded - padding_free| of the loss on one batch, same weights: the two layouts agree.
    `packed` (SFT): the batch's sequences packed into rows (`pack_rows`), then flattened."""
    import torch

    model = build_model(shape, args, device, attn).eval()
    losses = []
    with (
        torch.no_grad(),
        torch.autocast(device.type, dtype=args.dtype, enabled=args.dtype != torch.float32),
    ):
        for padding_free in (False, True):
            rows = batch if kind == "sft" else dpo_rows(batch)
            if packed and padding_free:
                rows = pack_rows(rows, args.pack_length)
            inputs = collate(rows, padding_free, device)
            if kind == "sft":
                losses.append(float(sft_loss(model, inputs)))
            else:
                # policy = reference at the start: compare the log-probs, not the (log 2) loss
                logps = sequence_logps(model, inputs, len(rows))
                losses.append(logps.double().cpu())
    del model
    gc.collect()
    if kind == "sft":
        return abs(losses[0] - losses[1])
    return float((losses[0] - losses[1]).abs().max() / losses[0].abs().max().clamp(min=1))


def guarded(fn, *a):
    """Run one measurement; a CUDA out-of-memory error becomes a row that says so."""
    import torch

    try:
        return fn(*a)
    except torch.cuda.OutOfMemoryError as error:
        gc.collect()
        torch.cuda.empty_cache()
        return {"error": f"out of memory: {str(error).splitlines()[0]}"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    for key in ("hidden", "layers", "heads", "kv-heads", "intermediate", "vocab"):
        parser.add_argument(f"--{key}", type=int, help="override the size's value")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences (SFT) / pairs (DPO)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--min-len", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--median-len", type=int, default=512)
    parser.add_argument("--answer-frac", type=float, default=0.15, help="answer share of a row")
    parser.add_argument(
        "--attn",
        nargs="+",
        default=["sdpa"],
        help="attention implementations: sdpa, flash_attention_2, flex_attention, eager",
    )
    parser.add_argument("--runs", nargs="+", default=["sft", "dpo"], choices=["sft", "dpo"])
    parser.add_argument("--lora", action="store_true", help="LoRA on all linear layers")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument(
        "--weights",
        choices=["bf16", "fp32"],
        default="bf16",
        help="bf16 weights, or fp32 master weights under bf16 autocast",
    )
    parser.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing")
    parser.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s of the GPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU smoke: torch threads (1: several threads only thrash on a shared small CPU)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the padded = free check")
    parser.add_argument(
        "--packing",
        action="store_true",
        help="SFT also packed (TRL's bfd packing); without a GPU: the tiny model on CPU",
    )
    parser.add_argument(
        "--pack-length", type=int, help="--packing: tokens per packed row (default --max-len)"
    )
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="tiny model on CPU in float32, 1 + 2 steps of 4 short sequences (tests the code)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        smoke_sizes(args)
    return args


def smoke_sizes(args) -> None:
    """The CPU smoke test's model and data (tiny, short)."""
    args.cpu_smoke = True
    args.size = "tiny"
    args.batch_size, args.steps, args.warmup = 4, 2, 1
    args.min_len, args.max_len, args.median_len = 16, 96, 48


def main(argv=None) -> int:
    import torch

    threads = torch.get_num_threads()
    try:
        return measure(parse_args(argv))
    finally:
        torch.set_num_threads(threads)


def measure(args) -> int:
    import torch

    if args.cpu_smoke:
        device, device_name = torch.device("cpu"), "cpu (smoke test)"
        args.dtype = torch.float32
        torch.set_num_threads(args.threads)
    elif not torch.cuda.is_available() and args.packing:
        print("no CUDA GPU: --packing measures the tiny model on CPU (--cpu-smoke's sizes)")
        smoke_sizes(args)
        device, device_name = torch.device("cpu"), "cpu (no GPU; smoke sizes)"
        args.dtype = torch.float32
        torch.set_num_threads(args.threads)
    elif not torch.cuda.is_available():
        print("no CUDA GPU: bench/gpu_train.py measures GPU training; nothing measured")
        print("(run with --cpu-smoke to exercise the code on a tiny model on CPU)")
        return 0
    else:
        device, device_name = torch.device("cuda"), torch.cuda.get_device_name()
        args.dtype = torch.bfloat16
        torch.backends.cuda.matmul.allow_tf32 = True
    args.peak = peak_flops(device_name, args.peak_tflops)
    if device.type == "cuda" and args.peak is None:
        print(f"unknown peak FLOP/s for {device_name!r}: pass --peak-tflops for MFU")
    attns = []
    for attn in args.attn:
        if attn == "flash_attention_2":
            from transformers.utils import is_flash_attn_2_available

            if not is_flash_attn_2_available():
                print("flash_attention_2: flash-attn is not installed; skipped")
                continue
        attns.append(attn)
    shape = model_shape(args)
    n = matmul_params(shape)
    print(
        f"device: {device_name}; model: {args.size} (hidden {shape['hidden']}, layers"
        f" {shape['layers']}, heads {shape['heads']}/{shape['kv_heads']} kv, intermediate"
        f" {shape['intermediate']}, vocab {shape['vocab']}), N = {n / 1e6:,.1f}M matmul"
        f" parameters; {'LoRA r ' + str(args.lora_r) if args.lora else 'full fine-tuning'},"
        f" {str(args.dtype).removeprefix('torch.')}{', grad ckpt' if args.grad_ckpt else ''}"
    )
    print(
        f"batches: {args.batch_size} per step, {args.warmup} warm-up + {args.steps} timed steps,"
        f" lengths log-normal median {args.median_len} in [{args.min_len}, {args.max_len}],"
        f" answer {args.answer_frac:.0%}"
    )
    data = {
        "sft": make_sft_batches(args, shape["vocab"]),
        "dpo": make_dpo_batches(args, shape["vocab"]),
    }
    args.pack_length = args.pack_length or args.max_len
    packing = args.packing and "sft" in args.runs
    if packing:
        packed, packed_warmup = pack_batches(data["sft"], args)
        print(f"packed: rows of {args.pack_length} tokens, {args.batch_size} rows per step")
    results, checks = [], {}
    for attn in attns:
        for kind in args.runs:
            if not args.no_check:
                checks[f"{kind}/{attn}"] = guarded(
                    loss_check, kind, attn, data[kind][0], shape, args, device
                )
                if packing and kind == "sft":
                    checks[f"{kind}/{attn}/packed"] = guarded(
                        loss_check, kind, attn, data[kind][0], shape, args, device, True
                    )
            runs = [("padded", data[kind], None), ("padding_free", data[kind], None)]
            if packing and kind == "sft":
                runs.append(("packed", packed, packed_warmup))
            for mode, batches, warmup in runs:
                row = guarded(run, kind, mode, attn, batches, shape, args, device, warmup)
                row.update(run=kind, mode=mode, attn=attn)
                results.append(row)
                print(f"  {kind} {row['mode']} {attn}: {format_row(row)}", flush=True)
    ratios = []
    for attn in attns:
        for kind in args.runs:
            rows = {r["mode"]: r for r in results if (r["run"], r["attn"]) == (kind, attn)}
            padded = rows["padded"]
            for mode in ("padding_free", "packed"):
                other = rows.get(mode)
                if other is None or "error" in padded or "error" in other:
                    continue
                ratios.append(
                    {
                        "run": kind,
                        "attn": attn,
                        "mode": mode,
                        "speedup": other["tokens_per_s"] / padded["tokens_per_s"],
                        "same_real_tokens": other["real_tokens"] == padded["real_tokens"],
                    }
                )
    print_table(results, ratios, checks)
    report = {
        "device": device_name,
        "size": args.size,
        "shape": shape,
        "matmul_params": n,
        "lora": args.lora,
        "dtype": str(args.dtype).removeprefix("torch."),
        "weights": args.weights,
        "grad_ckpt": args.grad_ckpt,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "pack_length": args.pack_length if packing else None,
        "lengths": {"min": args.min_len, "median": args.median_len, "max": args.max_len},
        "peak_flops": args.peak,
        "results": results,
        "ratios": ratios,
        "loss_checks": checks,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def format_row(r: dict) -> str:
    if "error" in r:
        return r["error"]
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
    return f"{r['tokens_per_s']:,.0f} tok/s, MFU {mfu}, {r['seconds']:.2f} s"


def print_table(results: list[dict], ratios: list[dict], checks: dict) -> None:
    print()
    print(
        f"{'run':<4} {'mode':<13} {'attn':<15} {'tokens/s':>10} {'ex/s':>8} {'TFLOP/s':>8}"
        f" {'MFU':>6} {'pad %':>6} {'mem GiB':>8} {'real tok':>9}"
    )
    for r in results:
        if "error" in r:
            print(f"{r['run']:<4} {r['mode']:<13} {r['attn']:<15} {r['error']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"
        print(
            f"{r['run']:<4} {r['mode']:<13} {r['attn']:<15} {r['tokens_per_s']:>10,.0f}"
            f" {r['examples_per_s']:>8.2f} {r['achieved_tflops']:>8.2f} {mfu:>6}"
            f" {r['padding_share']:>6.1%} {mem:>8} {r['real_tokens']:>9}"
        )
    for q in ratios:
        mode = q["mode"].replace("_", "-")
        print(
            f"{mode} / padded, {q['run'].upper()} {q['attn']}: {q['speedup']:.2f}x"
            f" (same real tokens: {q['same_real_tokens']})"
        )
    for key, diff in checks.items():
        if isinstance(diff, dict):
            print(f"loss check {key}: {diff['error']}")
        else:
            print(f"loss check {key}: |padded - padding-free| = {diff:.2e} (relative for DPO)")


if __name__ == "__main__":
    sys.exit(main())
