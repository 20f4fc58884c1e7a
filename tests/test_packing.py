"""SFT `packing` and `padding_free`: TRL's packed, flattened batches give the loss of the
same examples padded (each example attends to itself only), and training runs with both."""

from __future__ import annotations

import pytest

from ragtrain.core.records import write_jsonl
from ragtrain.core.settings import with_defaults
from ragtrain.training.sft_dpo import TRAIN_DEFAULTS, check_packing


def _records(n: int) -> list[dict]:
    """Examples of varied lengths, so packing puts several, unequal, into a row."""
    out = []
    for i in range(n):
        words = " ".join(f"w{j}" for j in range(3 + 5 * (i % 4)))
        out.append(
            {
                "id": f"q{i}",
                "prompt": [{"role": "user", "content": f"Doc {i}: {words}. When?"}],
                "completion": [
                    {"role": "assistant", "content": f"In {1900 + i}, {words[: 3 * i]}"}
                ],
            }
        )
    return out


def _node(**extra) -> dict:
    node = {"kind": "sft", "name": "sft", "max_length": 256, "batch_size": 4, **extra}
    return with_defaults(node, TRAIN_DEFAULTS)


def test_packing_settings_are_checked():
    check_packing(_node(packing=True, padding_free=True))
    with pytest.raises(ValueError, match=r"^models\.sft\.packing: packing puts examples"):
        check_packing(_node(packing=True, sampling="sequential"))
    check_packing(_node(padding_free=True, sampling="sequential"))  # order kept
    with pytest.raises(ValueError, match=r"^models\.sft\.padding_free: expected true or false"):
        check_packing(_node(padding_free="yes"))


@pytest.mark.slow
def test_a_packed_batch_has_the_loss_of_the_same_examples_padded(tiny_model, tmp_path):
    """Through TRL's own path (SFTTrainer's data preparation, collator and compute_loss):
    all the examples in one padded batch, and the same examples packed (best fit, rows of
    max_length) and flattened into one row whose position_ids restart at each example.
    The same label tokens, so the same mean loss. Letting the packed examples attend to
    each other (an all-ones attention mask over the row) changes it: the test would catch
    packing that leaks attention across examples."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from ragtrain.training.sft_dpo import _dataset, trl_config
    from ragtrain.training.toolkit import kept_examples, load_tokenizer

    path = tmp_path / "train.jsonl"
    write_jsonl(path, _records(10))
    data = _dataset(path, "sft")
    tokenizer = load_tokenizer(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    batches, trainers = {}, {}
    for packing in (False, True):
        node = _node(packing=packing)
        args = trl_config("sft", node, tmp_path / f"out-{packing}", False, 10, torch.float32)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        rows = list(trainer.train_dataset)
        batches[packing] = trainer.data_collator(rows)
        trainers[packing] = trainer
        assert kept_examples(trainer, 10, "example", path) == 10
    packed_rows = trainers[True].train_dataset["seq_lengths"]
    assert len(packed_rows) < 10 and max(map(len, packed_rows)) > 1  # really packed
    padded, packed = batches[False], batches[True]
    assert "attention_mask" in padded and "attention_mask" not in packed
    assert packed["input_ids"].shape[0] == 1  # one flattened row
    assert (packed["position_ids"] == 0).sum() == 10  # restarting at each example
    # The same tokens carry a loss both ways.
    labels = {k: sorted(b["labels"][b["labels"] != -100].tolist()) for k, b in batches.items()}
    assert labels[False] == labels[True]

    def loss(trainer, inputs) -> float:
        with torch.no_grad():
            return float(trainer.compute_loss(model, dict(inputs)))

    unpacked_loss, packed_loss = loss(trainers[False], padded), loss(trainers[True], packed)
    assert packed_loss == pytest.approx(unpacked_loss, rel=1e-5)
    leaky = {k: packed[k] for k in ("input_ids", "labels", "position_ids")}
    leaky["attention_mask"] = torch.ones_like(packed["input_ids"])
    assert abs(loss(trainers[True], leaky) - unpacked_loss) > 100 * 1e-5 * unpacked_loss


@pytest.mark.slow
def test_sft_trains_packed_and_padding_free(tiny_model, tmp_path, monkeypatch):
    from ragtrain.training import sft_dpo
    from ragtrain.training.sft_dpo import train

    collators = []
    counted = sft_dpo.kept_examples

    def kept_examples(trainer, *args):
        collators.append(trainer.data_collator.padding_free)
        return counted(trainer, *args)

    monkeypatch.setattr(sft_dpo, "kept_examples", kept_examples)
    path = tmp_path / "train.jsonl"
    write_jsonl(path, _records(8))
    packed = train(
        {**_node(packing=True, logging_steps=1, lora={"r": 4, "alpha": 8})},
        tiny_model,
        path,
        None,
        tmp_path / "packed",
        tmp_path / "work",
    )
    # Every example counted, though rows hold several: one step of packed rows.
    assert packed["n_train"] == 8 and packed["steps"] == 1
    free = train(
        {**_node(padding_free=True, logging_steps=1, lora={"r": 4, "alpha": 8})},
        tiny_model,
        path,
        None,
        tmp_path / "free",
        tmp_path / "work",
    )
    # The batches stay (8 examples / batch 4), only their padding goes.
    assert free["n_train"] == 8 and free["steps"] == 2
    assert packed["train_loss"] > 0 and free["train_loss"] > 0
    assert collators == [True, True]  # both batches flattened, no padding
