"""The backtracking correction recipe (Feng et al., ICLR 2025): a `backtracking:` block
expanded into plain nodes.

An answer is one step per retrieved document, then the answer
(ragtrain.generation.backtracking). A model first learns the step format by SFT on the
true steps; DPO then trains it step by step from the last step back to the first: the
last step's data is sampled from the SFT model, each earlier step's from the model just
trained on the step after it, and each DPO node starts from that model. The block also
makes the paper's ablations: every step's pairs (all sampled from the SFT model) mixed
into one DPO run, and the chain in forward order (step 1 first). With `published`, the
published BackTracking `stepK` files train the same backward chain.

Every stage is an ordinary node; this module only writes the nodes (`snakemake -n`
lists them, the chain in order).
"""

from __future__ import annotations

from typing import Any

from ragtrain.core.settings import merge
from ragtrain.data.preferences import file_step
from ragtrain.generation.backtracking import (
    PAIR_FILE_DEFAULTS,
    STEP_PAIRS_DEFAULTS,
    STEP_TEMPLATE,
)
from ragtrain.graph.kinds import RETRIEVER_DEFAULTS, ConfigError, kinds_of
from ragtrain.recipes.nodes import add_node, known_keys

ORDERS = ("mixed", "forward", "backward")
BACKTRACKING_BLOCK_DEFAULTS: dict[str, Any] = {
    "name": "bt",
    "prompt": STEP_TEMPLATE,
    # The step-format SFT node over `model` (null: no SFT; the chains start from `model`).
    "sft": {},
    "sft_data": {},
    "dpo": {},
    "pairs": {},
    # Settings of one step's pair products over `pairs`, by step number.
    "per_step": {},
    "orders": list(ORDERS),
    "published": None,
    "evaluate": None,
}
PUBLISHED_DEFAULTS: dict[str, Any] = {"files": [], "init": None, **PAIR_FILE_DEFAULTS}
EVALUATE_KEYS = {"datasets": 0, "generation": 0, "resources": 0}
BLOCK = "backtracking"


def _steps(config: dict, retrieval: str) -> int:
    """Steps of the chain: the retriever's k documents, then the answer."""
    node = config["retrievers"].get(retrieval)
    if node is None:
        known = ", ".join(sorted(config["retrievers"])) or "none"
        raise ConfigError(f"{BLOCK}.retrieval", f"unknown retriever {retrieval!r} (known: {known})")
    k = node.get("k", RETRIEVER_DEFAULTS.get(node.get("kind"), {}).get("k"))
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"retrievers.{retrieval}.k", "the step chain needs a number of documents")
    return k + 1


def _per_step(block: dict, steps: int) -> dict[int, dict]:
    out = {}
    for key, settings in block["per_step"].items():
        step = int(key) if str(key).isdigit() else None
        if step is None or not 1 <= step <= steps:
            raise ConfigError(
                f"{BLOCK}.per_step.{key}",
                f"expected a step number 1..{steps} ({steps - 1} documents, then the answer)",
            )
        known_keys(f"{BLOCK}.per_step.{key}", settings, {**STEP_PAIRS_DEFAULTS, "generation": 0})
        out[step] = settings
    return out


def expand(config: dict) -> None:
    """Expand the `backtracking` block into plain nodes. With P its `name` and S steps (the
    retriever's k documents, then the answer):

    - `P_sft_data`, `P_sft`: the true steps as SFT data over `sft_dataset` (default
      `dataset`); SFT from `model`;
    - per order in `orders` (from `P_sft`, or `model` with `sft: null`):
      - `backward`: for K = S..1, `P_pairs<K>_from_<M>` (step K's pairs sampled from the
        current model M) and `P_back<K>` (DPO from M on them), M then `P_back<K>`;
      - `forward`: the same for K = 1..S, as `P_fwd<K>`;
      - `mixed`: step K's pairs from the SFT model for every K (shared with the chains'
        first nodes), `P_mixed_pairs` holding them all, and `P_mixed` (one DPO run);
    - with `published.files`: `P_published<K>` per `stepK` file and the backward chain
      `P_pub<K>` over them, from `published.init` (default: the SFT model);
    - with `evaluate`: one evaluate entry of the SFT model and each order's last model on
      `evaluate.datasets`, in the step format, with the block's retrieval.
    """
    block = merge(BACKTRACKING_BLOCK_DEFAULTS, config[BLOCK])
    p = block["name"]
    known_keys(BLOCK, config[BLOCK], {**BACKTRACKING_BLOCK_DEFAULTS, "model": 0,
                                      "dataset": 0, "retrieval": 0,
                                      "sft_dataset": 0})  # fmt: skip
    if not block.get("model"):
        raise ConfigError(f"{BLOCK}.model", "the backtracking block needs the model it starts from")
    for order in block["orders"]:
        if order not in ORDERS:
            raise ConfigError(
                f"{BLOCK}.orders", f"unknown order {order!r} (known: {', '.join(ORDERS)})"
            )
    sampled = bool(block["orders"]) or block["sft"] is not None
    for field in ("dataset", "retrieval") if sampled else ():
        if not block.get(field):
            raise ConfigError(f"{BLOCK}.{field}", "the SFT data and sampled steps need it")
    # The block's settings become nodes of these kinds: their keys are checked here.
    for key, section, kind, made in (
        ("sft", "models", "sft", ("kind", "init", "data")),
        ("sft_data", "products", "step_sft", ("kind", "dataset", "retrieval", "prompt")),
        ("dpo", "models", "dpo", ("kind", "init", "data")),
        ("pairs", "products", "step_pairs",
         ("kind", "model", "dataset", "retrieval", "prompt", "step")),
    ):  # fmt: skip
        allowed = {k: 0 for k in kinds_of(section)[kind].keys if k not in made}
        known_keys(f"{BLOCK}.{key}", block[key] or {}, allowed)

    def add(section: str, name: str, node: dict) -> None:
        add_node(config, BLOCK, section, name, node)

    start = block["model"]
    if block["sft"] is not None:
        source = {"dataset": block.get("sft_dataset") or block["dataset"],
                  "retrieval": block["retrieval"], "prompt": block["prompt"]}  # fmt: skip
        add("products", f"{p}_sft_data", {**block["sft_data"], "kind": "step_sft", **source})
        sft = {"kind": "sft", "init": block["model"], "data": f"{p}_sft_data"}
        add("models", f"{p}_sft", {**block["sft"], **sft})
        start = f"{p}_sft"
    evaluated = [start] if block["sft"] is not None else []

    steps = _steps(config, block["retrieval"]) if sampled else 0
    per_step = _per_step(block, steps) if sampled else {}

    def pairs(step: int, model: str) -> str:
        """Step `step`'s pairs sampled from `model` (one product per pair, shared)."""
        name = f"{p}_pairs{step}_from_{model.removeprefix(f'{p}_')}"
        if name not in config["products"]:
            settings = merge(block["pairs"], per_step.get(step, {}))
            add("products", name, {**settings, "kind": "step_pairs", "model": model,
                                   "dataset": block["dataset"], "retrieval": block["retrieval"],
                                   "prompt": block["prompt"], "step": step})  # fmt: skip
        return name

    def chain(label: str, order: list[int], data) -> str:
        """DPO step by step in `order`, each node from the one before; the last one."""
        current = start
        for step in order:
            name = f"{p}_{label}{step}"
            add("models", name, {**block["dpo"], "kind": "dpo", "init": current,
                                 "data": data(step, current)})  # fmt: skip
            current = name
        return current

    backward, forward = list(range(steps, 0, -1)), list(range(1, steps + 1))
    for order in block["orders"]:
        if order == "backward":
            evaluated.append(chain("back", backward, pairs))
        elif order == "forward":
            evaluated.append(chain("fwd", forward, pairs))
        else:
            mixed = [pairs(step, start) for step in forward]
            add("products", f"{p}_mixed_pairs", {"kind": "pair_mix", "pairs": mixed})
            mixed_dpo = {"kind": "dpo", "init": start, "data": f"{p}_mixed_pairs"}
            add("models", f"{p}_mixed", {**block["dpo"], **mixed_dpo})
            evaluated.append(f"{p}_mixed")
    if block["published"] is not None:
        evaluated.append(_published(config, block, add, start))
    if block["evaluate"] is not None:
        known_keys(f"{BLOCK}.evaluate", block["evaluate"], EVALUATE_KEYS)
        if not block["evaluate"].get("datasets"):
            raise ConfigError(f"{BLOCK}.evaluate.datasets", "list the datasets evaluated on")
        config["evaluate"] = [
            *(config.get("evaluate") or []),
            {**block["evaluate"], "models": evaluated, "retrieval": [block["retrieval"]],
             "prompt": block["prompt"], "answer_format": "steps"},
        ]  # fmt: skip


def _published(config: dict, block: dict, add, start: str) -> str:
    """The published `stepK` files as pair products, and the backward chain over them."""
    p = block["name"]
    published = merge(PUBLISHED_DEFAULTS, block["published"])
    known_keys(f"{BLOCK}.published", block["published"], PUBLISHED_DEFAULTS)
    by_step: dict[int, str] = {}
    for i, path in enumerate(published["files"]):
        step = file_step(path)
        if step is None:
            raise ConfigError(
                f"{BLOCK}.published.files[{i}]",
                f"{path!r} does not name its step (BackTracking's files are `...step<K>...`)",
            )
        if step in by_step:
            raise ConfigError(
                f"{BLOCK}.published.files[{i}]", f"step {step} again (also {by_step[step]!r})"
            )
        by_step[step] = path
    if not by_step:
        raise ConfigError(f"{BLOCK}.published.files", "list the published step files")
    settings = {k: published[k] for k in PAIR_FILE_DEFAULTS}
    current = published["init"] or start
    for step in sorted(by_step, reverse=True):
        data = f"{p}_published{step}"
        add("products", data, {**settings, "kind": "pair_file", "path": by_step[step]})
        name = f"{p}_pub{step}"
        add("models", name, {**block["dpo"], "kind": "dpo", "init": current, "data": data})
        current = name
    return current
