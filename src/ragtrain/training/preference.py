"""KTO, ORPO and SimPO: TRL's other preference trainers, as model kinds of the `train`
stage beside SFT and DPO. `ragtrain.training.sft_dpo.train` runs them as it runs DPO (the
init model, LoRA or full, quantization, checkpoints and resume, the dev split, the model
folder, metrics.json, loss.png); what is theirs is here: defaults, checks, data, TRL's
config and trainer class.

- kto (TRL `KTOTrainer`, Ethayarajh et al. 2024): answers labelled desirable or not, no
  pairs needed, against a reference (the init model). Data: a pair product, unpaired
  (chosen: desirable, rejected: undesirable; each distinct answer to a prompt once), or
  a `judge` product's samples (right: desirable, wrong: undesirable, as
  `preference_pairs` tells them apart; each distinct answer once), each question in its
  judge's split. TRL reads KTO's examples in a fixed order (its KL term pairs each
  example with its batch neighbour's answer): `sampling: random` shuffles them once, by
  `seed`. `desirable_weight: null` balances the classes (`class_weights`).
- orpo (TRL `experimental.orpo.ORPOTrainer`, Hong et al. 2024): the SFT loss on the
  chosen answer plus `beta` (the paper's lambda) times a log odds-ratio term; no
  reference model.
- simpo (TRL `experimental.cpo.CPOTrainer` with `loss_type="simpo"`, Meng et al. 2024):
  the length-normalised log-likelihood as implicit reward, scaled by `beta`, with a
  target margin `simpo_gamma`; no reference model; `cpo_alpha` weighs CPO's NLL term on
  the chosen answers (0: SimPO as published).

ORPO and CPO live in `trl.experimental`, whose API may change in any TRL release (the
train env pins TRL): they are imported with TRL's notice of that silenced, and logged
once instead.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

log = logging.getLogger(__name__)

PREFERENCE_KINDS = ("kto", "orpo", "simpo")
KTO_LOSSES = ("kto", "apo_zero_unpaired")
# Each kind's own defaults (sft_dpo.TRAIN_DEFAULTS puts them over ON_RECORDS). The
# learning rate is LoRA's, as DPO's: TRL's 1e-6 is for full fine-tuning.
PREFERENCE_DEFAULTS = {
    "kto": {
        "learning_rate": 5e-5,
        "beta": 0.1,
        "loss_type": "kto",
        # null: balanced from the data's counts (class_weights); a number: as given.
        "desirable_weight": None,
        "undesirable_weight": 1.0,
    },
    # The paper's lambda, TRL's default.
    "orpo": {"learning_rate": 5e-5, "beta": 0.1},
    # The SimPO paper's: beta 2, a target margin of half of it (gamma / beta = 0.5; TRL's
    # `simpo_gamma` is the margin gamma itself), no NLL term.
    "simpo": {"learning_rate": 5e-5, "beta": 2.0, "simpo_gamma": 1.0, "cpo_alpha": 0.0},
}
# The KTO paper's range for desirable_weight * n_desirable / (undesirable_weight *
# n_undesirable) (its Eq. 8; TRL warns outside it), and the ratio aimed at when the
# weights 1 and `undesirable_weight` fall outside: the range's middle, clear of TRL's
# rounding of the bounds.
KTO_RATIO = (1.0, 4 / 3)
KTO_TARGET_RATIO = 7 / 6


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check(params: dict) -> None:
    """A preference node's own settings, before anything loads: one line naming the key."""
    kind = params["kind"]
    positive = ["beta"] + (["undesirable_weight"] if kind == "kto" else [])
    if kind == "kto" and params.get("desirable_weight") is not None:
        positive.append("desirable_weight")
    for key in positive:
        if not _number(params[key]) or params[key] <= 0:
            raise ValueError(f"{key}: expected a number > 0, got {params[key]!r}")
    for key in ("simpo_gamma", "cpo_alpha") if kind == "simpo" else ():
        if not _number(params[key]) or params[key] < 0:
            raise ValueError(f"{key}: expected a number >= 0, got {params[key]!r}")
    if kind == "kto":
        if params["loss_type"] not in KTO_LOSSES:
            raise ValueError(
                f"loss_type: expected one of {list(KTO_LOSSES)} (TRL's KTO losses),"
                f" got {params['loss_type']!r}"
            )
        if params["loss_type"] == "kto" and params["batch_size"] < 2:
            raise ValueError(
                f"batch_size: KTO needs at least 2 (its KL term pairs each example with its"
                f" batch neighbour's answer), got {params['batch_size']!r}"
            )


# ---------------------------------------------------------------- KTO's data


def kto_rows(path: str | Path, split: str, params: dict) -> list[dict]:
    """KTO's rows {prompt, completion, label} of a pair file or a judge product's file
    (`split`: its questions marked so); shuffled once by `seed` for `sampling: random`
    (training only: TRL reads them in this order)."""
    from ragtrain.core.records import RecordError, iter_jsonl

    first = next(iter(iter_jsonl(path)), None)
    if first is None:
        return []
    lineno, record = first
    if "samples" in record:
        rows = judged_rows(path, split)
    elif "chosen" in record:
        from ragtrain.training.sft_dpo import _rows

        rows = unpaired(_rows(path, "dpo"))
    else:
        raise RecordError(
            path,
            lineno,
            f"record {record.get('id')!r}: kto reads preference pairs (prompt, chosen,"
            " rejected) or judged samples (a `judge` product's records, `samples` with"
            " labels); this record is neither",
        )
    if split == "train" and params.get("sampling", "random") == "random":
        random.Random(params.get("seed", 0)).shuffle(rows)
    return rows


def _key(row: dict) -> str:
    return json.dumps([row["prompt"], row["completion"]], sort_keys=True)


def unpaired(pairs: list[dict]) -> list[dict]:
    """Pairs as KTO's unpaired rows (TRL's `unpair_preference_dataset`: chosen desirable,
    rejected undesirable), in pair order, each (prompt, answer) once: a chosen answer
    paired with several rejected ones is one desirable example, not several."""
    rows, seen = [], set()
    for pair in pairs:
        for field, label in (("chosen", True), ("rejected", False)):
            row = {"prompt": pair["prompt"], "completion": pair[field], "label": label}
            if (key := _key(row)) not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def judged_rows(path: str | Path, split: str) -> list[dict]:
    """A judge product's samples of the questions in `split` as KTO's rows: right answers
    desirable, wrong ones undesirable, as `preference_pairs` tells them apart (answerable:
    correct vs incorrect or refused; unanswerable: refused vs made up), each distinct
    answer to a question once."""
    from ragtrain.core.records import RecordError, iter_jsonl, require
    from ragtrain.generation.products import _distinct
    from ragtrain.judges.rules import CORRECT, INCORRECT, REFUSE
    from ragtrain.training.sft_dpo import prompt_is_text

    rows = []
    for lineno, record in iter_jsonl(path):
        who = f"record {record.get('id')!r}"
        require(record, "samples", list, path, lineno)
        require(record, "answers", list, path, lineno)
        text = prompt_is_text(record, path, lineno)
        require(record, "prompt", str if text else list, path, lineno)
        if any(not isinstance(s, dict) or "label" not in s or "text" not in s
               for s in record["samples"]):  # fmt: skip
            raise RecordError(path, lineno, f"{who}: a sample has no 'label' (not judged)")
        if (record.get("split") == "dev") != (split == "dev"):
            continue
        if record["answers"]:
            good, bad = (CORRECT,), (INCORRECT, REFUSE)
        else:
            good, bad = (REFUSE,), (INCORRECT,)
        for labels, label in ((good, True), (bad, False)):
            for answer in _distinct(record["samples"], labels, "first"):
                completion = answer if text else [{"role": "assistant", "content": answer}]
                rows.append({"prompt": record["prompt"], "completion": completion, "label": label})
    return rows


def class_weights(params: dict, n_desirable: int, n_undesirable: int) -> tuple[float, float]:
    """KTO's (desirable_weight, undesirable_weight). A given desirable_weight is kept;
    null is TRL's 1 when that puts desirable_weight * n_desirable / (undesirable_weight *
    n_undesirable) within the KTO paper's [1, 4/3], else the weight that puts the ratio at
    7/6, the range's middle (many wrong answers, few right: the right ones weigh more)."""
    undesirable = float(params["undesirable_weight"])
    if params.get("desirable_weight") is not None:
        return float(params["desirable_weight"]), undesirable
    if not n_desirable or not n_undesirable:
        return 1.0, undesirable  # one class only: nothing to balance
    ratio = n_desirable / (undesirable * n_undesirable)
    if KTO_RATIO[0] <= ratio <= KTO_RATIO[1]:
        return 1.0, undesirable
    return round(KTO_TARGET_RATIO / ratio, 4), undesirable


def with_class_weights(params: dict, dataset) -> dict:
    """`params` with KTO's resolved class weights and the counts they came from."""
    labels = list(dataset["label"])
    n_desirable = sum(labels)
    n_undesirable = len(labels) - n_desirable
    desirable, undesirable = class_weights(params, n_desirable, n_undesirable)
    log.info(
        "kto: %d desirable, %d undesirable examples; weights %s / %s",
        n_desirable,
        n_undesirable,
        desirable,
        undesirable,
    )
    return {
        **params,
        "desirable_weight": desirable,
        "undesirable_weight": undesirable,
        "n_desirable": n_desirable,
        "n_undesirable": n_undesirable,
    }


def metrics(kind: str, params: dict) -> dict:
    """What a preference model's metrics record adds: KTO's classes and weights."""
    if kind != "kto":
        return {}
    keys = ("n_desirable", "n_undesirable", "desirable_weight", "undesirable_weight")
    return {key: params[key] for key in keys if key in params}


# ---------------------------------------------------------------- TRL


def trl_config(kind: str, params: dict, common: dict):
    """TRL's KTOConfig, ORPOConfig or CPOConfig (SimPO) over the TrainingArguments every
    trainer here sets alike (`common`)."""
    if kind == "kto":
        from trl import KTOConfig

        return KTOConfig(
            **{**common, "train_sampling_strategy": "sequential"},
            beta=params["beta"],
            loss_type=params["loss_type"],
            desirable_weight=params["desirable_weight"] or 1.0,
            undesirable_weight=params["undesirable_weight"],
        )
    # ORPO's and CPO's collator reads the tokenized columns the Trainer would drop (they
    # turn it off themselves, with a warning).
    if kind == "orpo":
        return _experimental("orpo").ORPOConfig(
            **common, remove_unused_columns=False, beta=params["beta"]
        )
    if kind == "simpo":
        return _experimental("cpo").CPOConfig(
            **common,
            remove_unused_columns=False,
            loss_type="simpo",
            beta=params["beta"],
            simpo_gamma=params["simpo_gamma"],
            cpo_alpha=params["cpo_alpha"],
        )
    raise ValueError(f"kind: expected one of {list(PREFERENCE_KINDS)}, got {kind!r}")


def trainer_class(kind: str):
    if kind == "kto":
        from trl import KTOTrainer

        return KTOTrainer
    if kind == "orpo":
        return _experimental("orpo").ORPOTrainer
    return _experimental("cpo").CPOTrainer


_SAID: set[str] = set()


def _experimental(name: str):
    """`trl.experimental.<name>`, without TRL's warning that its API may change (the
    train env pins TRL); said once in the log instead."""
    import importlib
    import warnings

    from trl.import_utils import TRLExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TRLExperimentalWarning)
        module = importlib.import_module(f"trl.experimental.{name}")
    if name not in _SAID:
        import trl

        _SAID.add(name)
        log.info("using trl.experimental.%s (TRL %s; experimental API)", name, trl.__version__)
    return module
