"""One generation interface, two backends: vLLM (`LLM.chat`, batched) and HF `generate`.

Both take chat conversations (lists of messages), render them with the model's
own chat template, and return, per conversation, `n` completions with their
token counts, so that callers (evaluation, self-demonstrations, rollouts) never
depend on the backend.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Protocol

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
    # The generated token ids (HF backend): what PPO scores and trains on.
    token_ids: list[int] | None = None


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
    ) -> list[list[Completion]]:
        """`n` completions per conversation. `seeds`, one per conversation, seed each
        request (vLLM on GPU), each call (vLLM on CPU) or each batch (HF) with the first
        seed, so that a run resumed at a call boundary draws what an uninterrupted one would."""
        ...


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

        # Seeded once: successive calls draw new samples, a rerun the same ones.
        torch.manual_seed(params["seed"])
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(params["dtype"]))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self._setup(model.to(device).eval(), AutoTokenizer.from_pretrained(model_dir), params)

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
    ) -> list[list[Completion]]:
        import torch

        prompts = [
            self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
            for c in conversations
        ]
        results: list[list[Completion]] = []
        do_sample = sampling.temperature > 0
        # Greedy decoding has one answer: generate it once, repeat it n times (as vLLM does).
        returned = sampling.n if do_sample else 1
        extra = {"temperature": sampling.temperature, "top_p": sampling.top_p} if do_sample else {}
        if do_sample and sampling.top_k > 0:
            extra["top_k"] = sampling.top_k
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            # The chat template already holds the special tokens.
            enc = self.tokenizer(
                batch, return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            if seeds is not None:
                # One generator state per batch: a batch draws the same samples wherever
                # a run starts (HF has no per-request seed).
                torch.manual_seed(seeds[start])
            began = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=sampling.max_new_tokens,
                    min_new_tokens=sampling.min_new_tokens,
                    do_sample=do_sample,
                    num_return_sequences=returned,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **extra,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            completions = []
            for row in new:
                ids = [t for t in row.tolist() if t != self.tokenizer.pad_token_id]
                completions.append(
                    Completion(
                        self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                        len(ids),
                        ids,
                    )
                )
            self.throughput.add(sum(c.num_tokens for c in completions), time.perf_counter() - began)
            for i in range(len(batch)):
                answers = completions[i * returned : (i + 1) * returned]
                results.append(answers * (sampling.n // returned))
        return results


class VLLMGenerator:
    """vLLM's offline engine. On CPU `gpu_memory_utilization` is the share of host RAM for
    the worker: weights, activations and KV cache together."""

    def __init__(self, model_dir: str, params: dict):
        import torch

        if not torch.cuda.is_available() and len(os.sched_getaffinity(0)) <= 4:
            # vLLM on CPU keeps a core for its scheduler; on 2 cores that halves the
            # model's compute (measured: 15.7 -> 32.6 generated tok/s with none reserved).
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        from vllm import LLM

        # On CPU a per-request seed fails once a long prompt is prefilled in chunks (vLLM
        # rewinds the request's generator: "CPU Generator does not use offset"). There the
        # engine runs in this process instead, so that seeding torch before a call fixes
        # that call's samples: with the engine in its own process, requests reach it while
        # it is already stepping, and the same seed gave different samples run to run.
        self.request_seeds = torch.cuda.is_available()
        extra = {}
        if not self.request_seeds and params["tensor_parallel_size"] == 1:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            extra["distributed_executor_backend"] = "uni"
        self.llm = LLM(
            model=model_dir,
            dtype=params["dtype"],
            seed=params["seed"],
            max_model_len=params["max_model_len"],
            gpu_memory_utilization=params["gpu_memory_utilization"],
            enforce_eager=params["enforce_eager"],
            tensor_parallel_size=params["tensor_parallel_size"],
            **extra,
        )
        self.in_process = bool(extra)
        self.throughput = Throughput()

    def chat(
        self,
        conversations: list[Conversation],
        sampling: Sampling,
        seeds: list[int] | None = None,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        def params(seed: int | None) -> SamplingParams:
            return SamplingParams(
                n=sampling.n,
                max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
                top_k=sampling.top_k if sampling.temperature > 0 else -1,
                min_tokens=sampling.min_new_tokens,
                seed=seed,
            )

        sp = params(None)
        if seeds is not None and sampling.temperature > 0:
            if self.request_seeds:
                sp = [params(seed) for seed in seeds]
            elif self.in_process:
                import torch

                torch.manual_seed(seeds[0])  # the sampler draws from torch's generator
        began = time.perf_counter()
        outputs = self.llm.chat(conversations, sp, use_tqdm=False)
        results = [
            [Completion(o.text.strip(), len(o.token_ids)) for o in request.outputs]
            for request in outputs
        ]
        tokens = sum(c.num_tokens for r in results for c in r)
        self.throughput.add(tokens, time.perf_counter() - began)
        return results


BACKENDS = {"hf": HFGenerator, "vllm": VLLMGenerator}


def load_generator(model_dir: str, params: dict) -> Generator:
    backend = params["backend"]
    if backend not in BACKENDS:
        raise ValueError(f"generation.backend: expected one of {sorted(BACKENDS)}, got {backend!r}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    params = device_defaults(params)
    log.info("loading %s with the %s backend (%s)", model_dir, backend, params["dtype"])
    return BACKENDS[backend](model_dir, params)
