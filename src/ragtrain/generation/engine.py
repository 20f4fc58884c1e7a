"""One generation interface, two backends: vLLM (`LLM.chat`, batched) and HF `generate`.

Both take chat conversations (lists of messages), render them with the model's
own chat template, and return, per conversation, `n` completions with their
token counts, so that callers (evaluation, self-demonstrations, rollouts) never
depend on the backend.

Both can also continue a partial assistant answer (`prefixes`) and stop at strings
(`Sampling.stop`, kept in the output): segment-level search (ragtrain.training.rejection)
generates an answer a sentence at a time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from ragtrain.core.security import folder_trusts_remote_code

log = logging.getLogger(__name__)

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = -1
    n: int = 1
    # Benchmarks force every answer to full length, so both backends do equal work.
    min_new_tokens: int = 0
    # Stop strings, searched in the generated text only (not the prompt or prefix); the
    # text ends with the stop string that ended it, anything generated after is cut.
    stop: tuple[str, ...] = ()

    @classmethod
    def from_params(cls, params: dict, n: int = 1) -> Sampling:
        return cls(
            max_new_tokens=params["max_new_tokens"],
            temperature=params["temperature"],
            top_p=params["top_p"],
            top_k=params["top_k"],
            n=n,
        )


@dataclass
class Completion:
    text: str
    num_tokens: int
    # The generated token ids: what PPO scores and trains on. With stop strings they are
    # all the generated ids: the last one may run past the cut text.
    token_ids: list[int] | None = None
    # Why generation ended: "eos" (the model ended its answer), "stop" (a stop string),
    # "length" (max_new_tokens); None where the backend does not say.
    finish_reason: str | None = None


@dataclass
class Throughput:
    """Generated tokens and seconds spent generating (not loading)."""

    tokens: int = 0
    seconds: float = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class Generator(Protocol):
    throughput: Throughput

    def chat(
        self,
        conversations: list[Conversation],
        sampling: Sampling,
        seeds: list[int] | None = None,
        prefixes: list[str] | None = None,
    ) -> list[list[Completion]]:
        """`n` completions per conversation. `seeds`, one per conversation (callers derive
        them from their seed and the example's id), seed each request on both backends: its
        k-th sample draws from a generator of its own seeded with seed + k (as vLLM seeds
        the k-th of `n` samples), so a request's samples depend neither on the other
        requests of the call (batching, order, scheduling, the KV cache's size) nor on
        the process that runs it. Without `seeds`, each request gets a seed drawn from
        the generator's own seeded stream: a rerun draws the same samples, successive
        calls new ones.

        `prefixes`, one per conversation: the start of the assistant's answer, which the
        completions continue. Their text is then the raw continuation (leading spaces
        kept: the answer is prefix + text); without prefixes it is stripped."""
        ...


# Sequences of `max_model_len` tokens the CPU KV cache holds (vLLM queues the others).
CPU_KV_SEQUENCES = 16


def cpu_kv_cache_gib(model_dir: str | Path, max_model_len: int) -> int:
    """GiB of KV cache for vLLM on CPU: CPU_KV_SEQUENCES full-length sequences in float32
    (at least 1). vLLM's own default, 30% of host RAM less the model, took 10 s of each
    engine's start to zero (5.5 GiB for SmolLM2-135M, 127k tokens); this job's batches
    need a fraction of it."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    config = config.get("text_config", config)
    heads = config.get("num_attention_heads", 1)
    head_dim = config.get("head_dim") or config.get("hidden_size", 0) // heads
    kv_heads = config.get("num_key_value_heads", heads)
    per_token = 2 * config.get("num_hidden_layers", 1) * kv_heads * head_dim * 4
    return max(1, math.ceil(per_token * max_model_len * CPU_KV_SEQUENCES / 2**30))


def device_defaults(params: dict) -> dict:
    """Fill the settings left to the device (`auto` / null in the config).

    On CPU: float32, because bf16 matmuls without AVX512-BF16/AMX run at about 1 GFLOP/s
    (measured on the 2-core AVX2 machines here, against 170 in float32); eager mode
    (start-up 25 s instead of 90 s); 30% of host RAM for vLLM (weights, activations and
    KV cache together). On GPU: bf16, CUDA graphs, 90% of GPU memory.
    """
    import torch

    gpu = torch.cuda.is_available()
    filled = dict(params)
    if filled.get("dtype", "auto") == "auto":
        filled["dtype"] = "bfloat16" if gpu else "float32"
    if filled.get("gpu_memory_utilization") is None:
        filled["gpu_memory_utilization"] = 0.9 if gpu else 0.3
    if filled.get("enforce_eager") is None:
        filled["enforce_eager"] = not gpu
    return filled


def torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(
        name, "auto"
    )


class HFGenerator:
    """transformers `generate`, batched with left padding."""

    def __init__(self, model_dir: str, params: dict):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # Seeded once: requests without a seed take one from torch's stream, so successive
        # calls draw new samples, a rerun the same ones.
        torch.manual_seed(params["seed"])
        trust = folder_trusts_remote_code(model_dir)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch_dtype(params["dtype"]), trust_remote_code=trust
        )
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self._setup(model.to(device).eval(), tokenizer, params)

    @classmethod
    def from_model(cls, model, tokenizer, params: dict) -> HFGenerator:
        """Generate with a model already in memory (PPO's policy while it trains); the
        caller owns its device, mode and random state."""
        generator = cls.__new__(cls)
        generator._setup(model, tokenizer, params)
        return generator

    def _setup(self, model, tokenizer, params: dict) -> None:
        self.batch_size = params["batch_size"]
        self.model = model
        self.device = model.device
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.throughput = Throughput()

    def chat(
        self,
        conversations: list[Conversation],
        sampling: Sampling,
        seeds: list[int] | None = None,
        prefixes: list[str] | None = None,
    ) -> list[list[Completion]]:
        import torch

        _check_prefixes(conversations, prefixes)
        prompts = [
            self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
            + (prefixes[i] if prefixes is not None else "")
            for i, c in enumerate(conversations)
        ]
        results: list[list[Completion]] = []
        do_sample = sampling.temperature > 0
        # Greedy decoding has one answer: generate it once, repeat it n times (as vLLM does).
        returned = sampling.n if do_sample else 1
        _check_seeds(conversations, seeds)
        if do_sample and seeds is None:
            seeds = torch.randint(0, 2**31, (len(prompts),)).tolist()
        if do_sample and sampling.top_k <= 0:
            # As HF's own sampling did: top_k off (<= 0) leaves HF's default, the model's
            # generation_config or else 50 (vLLM samples the whole vocabulary there).
            top_k = getattr(getattr(self.model, "generation_config", None), "top_k", None)
            sampling = replace(sampling, top_k=50 if top_k is None else top_k)
        extra = {}
        eos = self._eos_ids()
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            # The chat template already holds the special tokens.
            enc = self.tokenizer(
                batch, return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            inputs = enc
            if do_sample:
                # Each prompt's rows, one per sample, next to each other (as HF's
                # num_return_sequences lays them out), each with its own generator.
                inputs = {k: v.repeat_interleave(returned, dim=0) for k, v in enc.items()}
                row_seeds = [
                    s + k for s in seeds[start : start + len(batch)] for k in range(returned)
                ]
                extra["logits_processor"] = _seeded_sampler(sampling, row_seeds, self.device)
            prompt_len = enc["input_ids"].shape[1]
            if sampling.stop:
                extra["stopping_criteria"] = _stop_criteria(
                    self.tokenizer, sampling.stop, prompt_len
                )
            began = time.perf_counter()
            with torch.inference_mode():
                # Sampled rows are drawn by the seeded sampler, which leaves one token
                # possible: greedy decoding then takes it (HF's own sampling draws every
                # row from torch's one generator, so a row's samples would depend on the
                # rows drawn before it).
                out = self.model.generate(
                    **inputs,
                    max_new_tokens=sampling.max_new_tokens,
                    min_new_tokens=sampling.min_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **extra,
                )
            new = out[:, prompt_len:]
            completions = []
            for j, row in enumerate(new.tolist()):
                ids = [t for t in row if t != self.tokenizer.pad_token_id]
                if prefixes is None:
                    text = self.tokenizer.decode(ids, skip_special_tokens=True)
                else:
                    # Decoded after the prompt's last tokens, so that a leading space is
                    # kept by tokenizers that drop it at the start of a text.
                    prompt_ids = enc["input_ids"][j // returned].tolist()
                    text = self._continuation(prompt_ids[-8:], ids)
                text, stopped = _cut_at_stop(text, sampling.stop)
                if stopped:
                    reason = "stop"
                elif any(t in eos or t == self.tokenizer.pad_token_id for t in row):
                    reason = "eos"  # ended (rows padded after their end), not cut
                else:
                    reason = "length"
                completions.append(
                    Completion(
                        text if prefixes is not None else text.strip(), len(ids), ids, reason
                    )
                )
            self.throughput.add(sum(c.num_tokens for c in completions), time.perf_counter() - began)
            for i in range(len(batch)):
                answers = completions[i * returned : (i + 1) * returned]
                results.append(answers * (sampling.n // returned))
        return results

    def _eos_ids(self) -> set[int]:
        ids = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = set(ids if isinstance(ids, list) else [ids])
        return {i for i in (*ids, self.tokenizer.eos_token_id) if i is not None}

    def _continuation(self, context: list[int], ids: list[int]) -> str:
        context = [t for t in context if t != self.tokenizer.pad_token_id]
        head = self.tokenizer.decode(context, skip_special_tokens=True)
        full = self.tokenizer.decode(context + ids, skip_special_tokens=True)
        if full.startswith(head):
            return full[len(head) :]
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _check_seeds(conversations: list[Conversation], seeds: list[int] | None) -> None:
    if seeds is not None and len(seeds) != len(conversations):
        raise ValueError(
            f"seeds: expected one per conversation ({len(conversations)}), got {len(seeds)}"
        )


def _seeded_sampler(sampling: Sampling, seeds: list[int], device):
    """A logits processor that samples each row with its own generator (temperature, then
    top-k and top-p as vLLM applies them) and leaves the drawn token the only one
    possible. It runs after HF's own processors (min_new_tokens, ...)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    class SeededSampler(LogitsProcessor):
        def __call__(self, input_ids, scores):
            logits = scores.float() / sampling.temperature
            if 0 < sampling.top_k < logits.shape[-1]:
                kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = logits.softmax(dim=-1)
            if sampling.top_p < 1.0:
                ordered, order = probs.sort(dim=-1, descending=True)
                # Drop the tokens after the smallest set that reaches top_p (the first
                # one is always kept).
                drop = (ordered.cumsum(dim=-1) - ordered) >= sampling.top_p
                probs = probs.scatter(-1, order, ordered.masked_fill(drop, 0.0))
            # A draw from probs: argmax of probs / q, q exponential noise (as vLLM draws;
            # torch.multinomial takes 20 ms a row on a 49k vocabulary, this 1 ms).
            noise = torch.empty_like(probs)
            for row, g in zip(noise, generators, strict=True):
                row.exponential_(generator=g)
            tokens = (probs / noise).argmax(dim=-1, keepdim=True)
            chosen = torch.full_like(scores, float("-inf"))
            return chosen.scatter_(1, tokens, 0.0)

    return LogitsProcessorList([SeededSampler()])


def _check_prefixes(conversations: list[Conversation], prefixes: list[str] | None) -> None:
    if prefixes is not None and len(prefixes) != len(conversations):
        raise ValueError(
            f"prefixes: expected one per conversation ({len(conversations)}), got {len(prefixes)}"
        )


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The text up to and including the first stop string it completes."""
    ends = [i + len(s) for s in stop if s and (i := text.find(s)) >= 0]
    return (text[: min(ends)], True) if ends else (text, False)


def _stop_criteria(tokenizer, stop: tuple[str, ...], prompt_len: int):
    """Stop a row once its generated text holds a stop string. (transformers'
    `stop_strings` also matches a stop string that starts in the prompt: a prefix ending
    in "." and a first token " The" would stop on ". ".)"""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopInGenerated(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            done = [any(s and s in t for s in stop) for t in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopInGenerated()])


class VLLMGenerator:
    """vLLM's offline engine. On CPU `gpu_memory_utilization` is the share of host RAM for
    the worker: weights, activations and KV cache together. With `max_lora_rank` it serves
    LoRA adapters too (`chat(..., adapter=folder)`): PPO's rollouts from its current policy."""

    def __init__(self, model_dir: str, params: dict):
        import torch

        if not torch.cuda.is_available() and len(os.sched_getaffinity(0)) <= 4:
            # vLLM on CPU keeps a core for its scheduler; on 2 cores that halves the
            # model's compute (measured: 15.7 -> 32.6 generated tok/s with none reserved).
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        from vllm import LLM

        extra = {}
        if not torch.cuda.is_available():
            # Every request is seeded (see `chat`). A request whose prompt is prefilled in
            # chunks samples a token after each chunk that vLLM throws away, rewinding the
            # request's generator, which a CPU generator cannot do ("CPU Generator does
            # not use offset"): prompts are therefore prefilled whole on CPU.
            extra["enable_chunked_prefill"] = False
            os.environ.setdefault(
                "VLLM_CPU_KVCACHE_SPACE", str(cpu_kv_cache_gib(model_dir, params["max_model_len"]))
            )
            if params["tensor_parallel_size"] == 1:
                # The engine in this process: no engine-core process next to this one.
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
                extra["distributed_executor_backend"] = "uni"
        if params.get("max_lora_rank"):
            extra.update(enable_lora=True, max_lora_rank=params["max_lora_rank"], max_loras=1)
        self._adapters: dict[str, int] = {}
        self.llm = LLM(
            model=model_dir,
            dtype=params["dtype"],
            seed=params["seed"],
            max_model_len=params["max_model_len"],
            gpu_memory_utilization=params["gpu_memory_utilization"],
            enforce_eager=params["enforce_eager"],
            tensor_parallel_size=params["tensor_parallel_size"],
            trust_remote_code=folder_trusts_remote_code(model_dir),
            **extra,
        )
        # Seeds for requests that come without one (see Generator.chat).
        self._seeds = random.Random(params["seed"])
        self.throughput = Throughput()

    def chat(
        self,
        conversations: list[Conversation],
        sampling: Sampling,
        seeds: list[int] | None = None,
        prefixes: list[str] | None = None,
        adapter: str | Path | None = None,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        _check_prefixes(conversations, prefixes)

        def params(seed: int | None) -> SamplingParams:
            return SamplingParams(
                n=sampling.n,
                max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
                top_k=sampling.top_k if sampling.temperature > 0 else -1,
                min_tokens=sampling.min_new_tokens,
                seed=seed,
                stop=list(sampling.stop),
                include_stop_str_in_output=True,
            )

        _check_seeds(conversations, seeds)
        sp = params(None)
        if sampling.temperature > 0:
            # A seed per request: vLLM then samples it from a generator of its own (the
            # k-th of n samples seeded with seed + k), whatever it is batched with. Without
            # one, the sampler draws from torch's generator in the order requests happen to
            # be scheduled, which depends on the KV cache's size (a share of the memory
            # free at start-up) and on the other requests.
            if seeds is None:
                seeds = [self._seeds.randrange(2**31) for _ in conversations]
            sp = [params(seed) for seed in seeds]
        extra = {}
        if adapter is not None:
            extra["lora_request"] = self._lora_request(adapter)
        if prefixes is not None:
            # The prefix as the assistant's last message, continued (not closed) by the
            # chat template.
            conversations = [
                [*c, {"role": "assistant", "content": p}]
                for c, p in zip(conversations, prefixes, strict=True)
            ]
            extra.update(add_generation_prompt=False, continue_final_message=True)
        began = time.perf_counter()
        try:
            outputs = self.llm.chat(conversations, sp, use_tqdm=False, **extra)
        except RuntimeError as e:
            if "does not use offset" not in str(e):
                raise
            raise RuntimeError(
                f"vLLM could not rewind a seeded request's CPU generator ({e}): a prompt"
                " was prefilled in chunks, which this engine turns off on CPU; use the"
                " `hf` backend for seeded sampling with this vLLM"
            ) from e
        results = [
            [
                Completion(
                    o.text if prefixes is not None else o.text.strip(),
                    len(o.token_ids),
                    token_ids=list(o.token_ids),
                    finish_reason=_vllm_reason(o),
                )
                for o in request.outputs
            ]
            for request in outputs
        ]
        tokens = sum(c.num_tokens for r in results for c in r)
        self.throughput.add(tokens, time.perf_counter() - began)
        return results

    def _lora_request(self, adapter: str | Path):
        """A LoRA adapter folder as vLLM's request: a new folder (new weights) gets a new id,
        so vLLM loads it rather than serving the adapter it cached under an old one."""
        from vllm.lora.request import LoRARequest

        path = str(Path(adapter).resolve())
        if path not in self._adapters:
            self._adapters[path] = len(self._adapters) + 1
        return LoRARequest(f"adapter-{self._adapters[path]}", self._adapters[path], path)


def _vllm_reason(output) -> str | None:
    """vLLM's finish_reason `stop` covers EOS (stop_reason None, or a stop token id) and
    stop strings (stop_reason the string)."""
    if output.finish_reason == "length":
        return "length"
    if output.finish_reason == "stop":
        return "stop" if isinstance(output.stop_reason, str) else "eos"
    return output.finish_reason


BACKENDS = {"hf": HFGenerator, "vllm": VLLMGenerator}


def load_generator(model_dir: str, params: dict) -> Generator:
    backend = params["backend"]
    if backend not in BACKENDS:
        raise ValueError(f"generation.backend: expected one of {sorted(BACKENDS)}, got {backend!r}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    params = device_defaults(params)
    log.info("loading %s with the %s backend (%s)", model_dir, backend, params["dtype"])
    return BACKENDS[backend](model_dir, params)
