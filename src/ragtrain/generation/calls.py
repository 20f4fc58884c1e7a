"""Model calls cached on disk: what makes a multi-call stage (prompt search, a judge's
tournament) resumable.

Every call's texts are stored under a key of everything that determines them (the
model's fingerprint, the conversation, the sampling, the request's seed), appended after
each chunk of conversations. A stage killed mid-way and run again finds the calls it had
finished and asks the model only for the rest; with seeded requests the answers are the
same as an uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ragtrain.generation.engine import Generator, Sampling

# CHUNK: conversations per model call; a killed stage loses at most one chunk's answers.
from ragtrain.judges.model import CHUNK, RawCache


def engine_key(model_dir: str | Path, settings: dict) -> tuple:
    """What makes two engines interchangeable: the model and the engine-level settings
    (sampling is given per call)."""
    keys = ("backend", "dtype", "max_model_len", "gpu_memory_utilization", "enforce_eager",
            "tensor_parallel_size", "batch_size")  # fmt: skip
    return (str(Path(model_dir).resolve()), *(repr(settings.get(k)) for k in keys))


class Engines:
    """One engine per (model, engine settings) in a process, loaded on first use: a
    model that judges its own answers is loaded once."""

    def __init__(self, load: Callable[[str, dict], Generator]):
        self.load = load
        self.loaded: dict[tuple, Generator] = {}

    def loader(self, model_dir: str | Path, settings: dict) -> Callable[[], Generator]:
        def get() -> Generator:
            key = engine_key(model_dir, settings)
            if key not in self.loaded:
                self.loaded[key] = self.load(str(model_dir), settings)
            return self.loaded[key]

        return get


class CachedChat:
    """A model's completions (texts only), each request looked up in `cache` first."""

    def __init__(
        self,
        load_generator: Callable[[], Generator],
        fingerprint: str,
        cache: RawCache,
        chunk: int = CHUNK,
    ):
        self.load_generator = load_generator
        self.generator: Generator | None = None
        self.fingerprint = fingerprint
        self.cache = cache
        self.chunk = chunk
        self.asked = 0  # conversations sent to the model (not found in the cache)
        self.reused = 0  # conversations answered from the cache

    def key(self, conversation: list[dict], sampling: Sampling, seed: int) -> str:
        # Greedy answers do not depend on the seed: one entry serves every seed.
        return RawCache.key(
            self.fingerprint, conversation, asdict(sampling), seed if sampling.temperature else None
        )

    def chat(
        self, conversations: list[list[dict]], sampling: Sampling, seeds: list[int]
    ) -> list[list[str]]:
        """`sampling.n` texts per conversation."""
        keys = [self.key(c, sampling, s) for c, s in zip(conversations, seeds, strict=True)]
        missing = [j for j, key in enumerate(keys) if key not in self.cache.entries]
        self.reused += len(keys) - len(missing)
        for start in range(0, len(missing), self.chunk):
            part = missing[start : start + self.chunk]
            if self.generator is None:
                self.generator = self.load_generator()
            completions = self.generator.chat(
                [conversations[j] for j in part], sampling, seeds=[seeds[j] for j in part]
            )
            self.cache.put(
                {keys[j]: [c.text for c in outs] for j, outs in zip(part, completions, strict=True)}
            )
            self.asked += len(part)
        return [list(self.cache.entries[key]) for key in keys]
