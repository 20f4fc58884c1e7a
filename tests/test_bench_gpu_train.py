"""bench/gpu_train.py: its CPU smoke mode runs the GPU benchmark's code on a tiny model."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_train", ROOT / "bench" / "gpu_train.py")
gpu_train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_train)


def smoke(tmp_path, *args: str) -> dict:
    out = tmp_path / "gpu_train.json"
    assert gpu_train.main(["--cpu-smoke", "--peak-tflops", "1", "--json", str(out), *args]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_cpu_smoke_measures_both_layouts(tmp_path, capsys):
    report = smoke(tmp_path)
    printed = capsys.readouterr().out
    rows = {(r["run"], r["mode"]): r for r in report["results"]}
    assert set(rows) == {(k, m) for k in ("sft", "dpo") for m in ("padded", "padding_free")}
    for row in rows.values():
        assert "error" not in row, row
        assert row["tokens_per_s"] > 0
        assert "mfu" in row and 0 < row["mfu"] < 1
        assert row["real_tokens"] > 0
    for kind in ("sft", "dpo"):
        padded, free = rows[(kind, "padded")], rows[(kind, "padding_free")]
        # Same sequences, so the same real tokens; only the padded batches hold padding.
        assert padded["real_tokens"] == free["real_tokens"]
        assert padded["padding_share"] > 0 and free["padding_share"] == 0
        # Padding-free and padded give the same loss / log-probs (float32).
        assert report["loss_checks"][f"{kind}/sdpa"] < 1e-4
    assert {(q["run"], q["same_real_tokens"]) for q in report["ratios"]} == {
        ("sft", True),
        ("dpo", True),
    }
    assert "padding-free / padded, SFT sdpa" in printed
    assert "padding-free / padded, DPO sdpa" in printed


@pytest.mark.slow
def test_cpu_smoke_with_lora(tmp_path):
    """LoRA: the DPO reference is the model with its adapter off; fewer FLOPs per token."""
    report = smoke(tmp_path, "--lora", "--runs", "dpo", "--no-check")
    assert report["lora"] and {r["mode"] for r in report["results"]} == {"padded", "padding_free"}
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in report["results"])


@pytest.mark.slow
def test_packing_without_a_gpu_measures_packed_and_unpacked_on_cpu(tmp_path, capsys, monkeypatch):
    """--packing: TRL's packed rows beside the padded and padding-free batches, on the
    same sequences; with no GPU, the tiny model on CPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "packing.json"
    assert gpu_train.main(["--packing", "--runs", "sft", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = {r["mode"]: r for r in report["results"]}
    assert set(rows) == {"padded", "padding_free", "packed"}
    assert all(r["tokens_per_s"] > 0 for r in rows.values())
    # The same real tokens in no more steps (rows of several sequences); no padding.
    assert rows["packed"]["real_tokens"] == rows["padded"]["real_tokens"]
    assert rows["packed"]["steps"] <= rows["padded"]["steps"]
    assert rows["packed"]["padding_share"] == 0
    assert report["pack_length"] == 96  # --max-len of the CPU sizes
    # Packed rows attend within each sequence only: the loss is the padded batch's.
    assert report["loss_checks"]["sft/sdpa/packed"] < 1e-4
    assert "no CUDA GPU: --packing measures the tiny model on CPU" in printed
    assert "packed / padded, SFT sdpa" in printed and "tok/s" in printed


def test_flops_formula():
    shape = gpu_train.model_shape(gpu_train.parse_args(["--size", "8b"]))
    n = gpu_train.matmul_params(shape)
    assert n == 7_504_658_432  # Llama-3.1-8B less its input embedding table
    s, attn = 1000, 12 * 32 * 4096 * 1000
    assert gpu_train.seq_flops(s, shape, n, "train") == s * (6 * n + attn)
    assert gpu_train.seq_flops(s, shape, n, "forward") == s * (2 * n + attn // 3)
    assert gpu_train.peak_flops("NVIDIA H100 80GB HBM3", None) == 989e12
    assert gpu_train.peak_flops("NVIDIA H100 PCIe", None) == 756e12
    assert gpu_train.peak_flops("NVIDIA A100-SXM4-80GB", None) == 312e12
    assert gpu_train.peak_flops("Tesla T4", None) is None


def test_without_a_gpu_it_says_so_and_exits_0(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_train.main([]) == 0
    printed = capsys.readouterr().out
    assert "no CUDA GPU" in printed and "nothing measured" in printed


@pytest.mark.parametrize("size", sorted(gpu_train.SIZES))
def test_sizes_have_whole_heads(size):
    shape = gpu_train.model_shape(gpu_train.parse_args(["--size", size]))
    assert shape["head_dim"] * shape["heads"] == shape["hidden"]
    assert shape["heads"] % shape["kv_heads"] == 0
