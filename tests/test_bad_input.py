"""Bad input, as a careless or a hostile user gives it: every case ends with one line that
names the config key (or `file:line`), exit status 1, and no output left behind.

One table per door: config files (checked as common.smk checks them before the first job,
through `python -m ragtrain.graph.config`), stage params and data files (a stage run
alone, `python -m ragtrain <stage>`), and faults of the file system. The suite runs in
process (a few seconds); a few config cases also go through Snakemake (slow tier) to
show that its check is the same one. README.md, "Reliability", gives the count.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ragtrain.__main__ import main as stage_main
from ragtrain.graph.config import check_files
from ragtrain.graph.config import main as config_main
from tests.conftest import ROOT

DEMO = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
DELETE = object()


def edited(changes: dict) -> dict:
    """The demo config with `changes` ({dotted key: value, or DELETE}) applied."""
    cfg = copy.deepcopy(DEMO)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = cfg
        for step in parents:
            node = node[int(step)] if isinstance(node, list) else node.setdefault(step, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return cfg


# --------------------------------------------------------------------------- config
# (id, changes to the demo config, what the one line must hold)
CONFIG_CASES = [
    ("k-float", {"retrievers.bm25.k": 2.0}, "retrievers.bm25.k: expected an integer, got 2.0"),
    ("batch-text", {"models.sft.batch_size": "4"}, "models.sft.batch_size: expected an integer"),
    ("seed-float", {"seed": 1.5}, "config key seed: expected an integer"),
    ("seed-bool", {"seed": True}, "config key seed: expected an integer, got True"),
    ("gpu-float", {"models.sft.resources": {"gpu": 1.0}}, "models.sft.resources.gpu: expected"),
    ("mem-text", {"resources.train": {"mem_mb": "lots"}}, "resources.train.mem_mb: expected"),
    ("lr-word", {"models.sft.learning_rate": "fast"}, "models.sft.learning_rate: expected a num"),
    ("lr-bad-exp", {"models.sft.learning_rate": "1e-x"}, "models.sft.learning_rate: expected"),
    ("run-dots", {"run": ".."}, "config key run: expected 1 to 100 of"),
    ("run-slash", {"run": "a/b"}, "config key run: expected 1 to 100"),
    ("run-long", {"run": "r" * 101}, "config key run: expected 1 to 100"),
    ("run-empty", {"run": ""}, "config key run: expected 1 to 100"),
    ("run-missing", {"run": DELETE}, "config key run: required, but not given"),
    ("models-missing", {"models": DELETE}, "config key models: required"),
    ("models-list", {"models": ["base"]}, "config key models: expected a map of named nodes"),
    (
        "name-300",
        {f"datasets.{'d' * 300}": {"world": "world", "split": "test"}},
        "datasets.dddd",
    ),
    (
        "name-space",
        {"retrievers.my bm25": {"kind": "bm25", "corpus": "world"}},
        "config key retrievers.my bm25: a node's name is 1 to 100",
    ),
    ("name-plus", {"corpora.a+b": {"world": "world"}}, "config key corpora.a+b: a node's name"),
    (
        "name-reserved",
        {"retrievers.none": {"kind": "bm25", "corpus": "world"}},
        "retrievers.none",
    ),
    ("typo-top", {"evalute": []}, "config key evalute: unknown key (did you mean 'evaluate'?)"),
    ("typo-generation", {"generaton": {}}, "generaton: unknown key (did you mean 'generation'?)"),
    ("unknown-top", {"banana": 1}, "config key banana: unknown key (known: run,"),
    ("typo-lora", {"models.sft.lora.rank": 8}, "models.sft.lora.rank: unknown key"),
    (
        "typo-gen-key",
        {"generation.temprature": 0.5},
        "generation.temprature: unknown key (did you mean 'temperature'?)",
    ),
    ("foreign-key", {"models.sft.kl_coef": 0.1}, "models.sft.kl_coef: not a key of a sft model"),
    ("kind-list", {"models.sft.kind": ["sft"]}, "models.sft.kind: expected a kind's name"),
    ("kind-unknown", {"retrievers.bm25.kind": "splade"}, "retrievers.bm25.kind: expected one of"),
    ("product-kind", {"products.judged.kind": "ranker"}, "products.judged.kind: expected one of"),
    (
        "stopwords",
        {"retrievers.bm25.stopwords": "klingon"},
        "retrievers.bm25.stopwords: expected one of en,",
    ),
    ("format", {"datasets.test.format": "csv"}, "datasets.test.format: expected one of auto"),
    ("dtype", {"models.base.dtype": "fp8"}, "models.base.dtype: expected one of"),
    ("backend", {"generation.backend": "tgi"}, "generation.backend: expected one of vllm, hf"),
    (
        "split-zero",
        {"worlds.world.questions.train": 0},
        "worlds.world.questions.train: expected at least 1, got 0",
    ),
    ("split-negative", {"worlds.world.questions.test": -5}, "worlds.world.questions.test"),
    (
        "dev-zero",
        {"products.judged.dev_fraction": 0},
        "products.judged.dev_fraction: expected more than 0",
    ),
    ("dev-one", {"products.judged.dev_fraction": 1.0}, "products.judged.dev_fraction: expected"),
    ("rate", {"worlds.world.multihop_rate": 1.5}, "worlds.world.multihop_rate: expected at most"),
    ("temperature", {"generation.temperature": -1}, "generation.temperature: expected at least"),
    ("top-p", {"generation.top_p": 0}, "generation.top_p: expected more than 0"),
    ("lora-r", {"models.sft.lora.r": 0}, "models.sft.lora.r: expected at least 1"),
    ("epochs", {"models.sft.epochs": 0}, "models.sft.epochs: expected more than 0"),
    ("eval-empty", {"evaluate.0.models": []}, "evaluate[0].models: expected at least 1 item"),
    ("eval-unknown", {"evaluate.0.datasets": ["nope"]}, "evaluate[0].datasets: unknown name"),
    ("init-unknown", {"models.sft.init": "gpt"}, "models.sft.init: unknown model 'gpt'"),
    ("data-kind", {"models.dpo.data": "sft_data"}, "models.dpo.data: a dpo model trains on"),
    ("cycle", {"products.demos.model": "dpo"}, "cycle: products.demos -> models.dpo"),
    (
        "closed-book-rag",
        {"products.demos.retrieval": "none"},
        "products.demos.prompt: template 'rag' reads retrieved documents",
    ),
    (
        "closed-book-eval",
        {"evaluate.0.retrieval": ["none"], "evaluate.0.closed_book_prompt": "rag"},
        "evaluate[0].closed_book_prompt: template 'rag' reads retrieved documents",
    ),
    (
        "base-path",
        {"models.base": {"path": "no/such/model/folder"}},
        "models.base.path: no such file or folder 'no/such/model/folder'",
    ),
    (
        "base-hub-as-path",
        {"models.base": {"path": "meta-llama/Llama-2-7b-hf"}},
        "(a hub id goes under `hub:`)",
    ),
    ("gguf", {"models.base.gguf": "nothere.gguf"}, "models.base.gguf: no GGUF file"),
    (
        "data-path",
        {"datasets.ext": {"path": "missing.jsonl", "format": "nq_open"}},
        "datasets.ext.path: no such file or folder 'missing.jsonl'",
    ),
    ("corpus-path", {"corpora.ext": {"path": "missing.jsonl"}}, "corpora.ext.path: no such file"),
    ("export-onnx", {"models.sft.export": "onnx"}, "models.sft.export: expected one of"),
    ("export-q4", {"models.sft.export_type": "q4"}, "models.sft.export_type: expected one of"),
    (
        "export-retriever",
        {"models.ret": {"kind": "biencoder", "dataset": "x", "export": "gguf"}},
        "models.ret.export: not a key of a biencoder model",
    ),
]


def run_config_check(tmp_path: Path, text: str | bytes, capsys) -> str:
    """`python -m ragtrain.graph.config` on one config file: its one error line."""
    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = sorted(tmp_path.rglob("*"))
    cwd = Path.cwd()
    os.chdir(tmp_path)  # paths in a config are relative to the working folder
    try:
        status = config_main([str(path)])
    finally:
        os.chdir(cwd)
    out, err = capsys.readouterr()
    assert status == 1, out
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
    [line] = err.splitlines()
    assert line.startswith("ragtrain config: error: ")
    return line


@pytest.mark.parametrize(("changes", "expected"), [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])  # fmt: skip
def test_a_bad_config_is_one_line_naming_its_key(tmp_path, capsys, changes, expected):
    line = run_config_check(tmp_path, yaml.safe_dump(edited(changes)), capsys)
    assert expected in line


# (id, the file's text, what the one line must hold; `{path}` is the file)
YAML_CASES = [
    ("syntax", "run: demo\nmodels:\n  base: {gguf: x\n", "{path}:4:1: YAML syntax error"),
    ("tab", "run: demo\nmodels:\n\tbase: {}\n", "{path}:3:1: YAML syntax error"),
    (
        "duplicate-top",
        "run: a\nrun: b\nmodels: {base: {hub: x/y}}\n",
        "{path}:2: key 'run' given twice in one map (first at line 1)",
    ),
    (
        "duplicate-nested",
        "run: a\nmodels:\n  base:\n    hub: x/y\n    hub: x/z\n",
        "{path}:5: key 'hub' given twice in one map (first at line 4)",
    ),
    ("latin-1", b"run: d\xe9mo\nmodels: {}\n", "{path}:1: not UTF-8 text (byte 0xe9)"),
    ("list", "- run: demo\n", "{path}: expected a map of config keys at the top, got a list"),
    ("empty", "", "{path}: expected a map of config keys at the top, got nothing"),
    ("text", "just words\n", "{path}: expected a map of config keys at the top, got text"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in YAML_CASES],
                         ids=[c[0] for c in YAML_CASES])  # fmt: skip
def test_a_bad_config_file_is_one_line_at_its_line(tmp_path, capsys, text, expected):
    line = run_config_check(tmp_path, text, capsys)
    assert expected.format(path=tmp_path / "config.yaml") in line


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    assert config_main([str(tmp_path / "my.yaml")]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith("my.yaml: cannot read the config file (No such file or directory)")


def test_numbers_written_1e_4_are_numbers_and_paths_given_exist(tmp_path):
    """YAML 1.1 reads `1e-4` as text: the config reads it as the number it means, where
    the schema takes a number (and a UTF-8 byte-order mark is read)."""
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n')
    text = yaml.safe_dump(edited({"datasets.ext": {"path": str(data), "format": "nq_open"}}))
    text = text.replace("learning_rate: 0.0003", "learning_rate: 1e-4")
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert "1e-4" in text
    cfg = check_files([path])
    assert cfg["models"]["sft"]["learning_rate"] == pytest.approx(1e-4)
    assert cfg["models"]["dpo"]["learning_rate"] == pytest.approx(1e-4)  # as given: 1.0e-4


# --------------------------------------------------------------------------- stages


def run_stage(tmp_path: Path, capsys, stage: str, params: dict, **files: str) -> str:
    """`python -m ragtrain <stage>` in this process, its inputs written from `files`
    ({option: text}, `out_*` options naming outputs under out/): its one error line."""
    args = [stage, "--params", json.dumps(params)]
    out = tmp_path / "out"
    for option, text in files.items():
        if option.startswith("out_"):
            args += [f"--{option[4:]}", str(out / option[4:])]
            continue
        path = tmp_path / f"{option}.jsonl"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        args += [f"--{option}", str(path)]
    status = stage_main(args)
    err = capsys.readouterr().err
    assert status == 1, err
    assert not out.exists() or not list(out.rglob("*")), "output left behind"
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"ragtrain {stage}: error: ")
    return line


def dataset(params: dict, text: str | bytes) -> tuple:
    return ("dataset", params, {"input": text, "out_output": "", "out_stats": ""})


def corpus(params: dict, text: str | bytes) -> tuple:
    return ("corpus", params, {"input": text, "out_output": ""})


def world(params: dict) -> tuple:
    return ("world", params, {"out_corpus": "", "out_questions": "", "out_stats": ""})


NQ = {"format": "nq_open"}
GOOD = '{"question": "Who?", "answer": ["Ann"]}\n'
# (id, (stage, params, files), what the one line must hold; `{input}` is the input file)
STAGE_CASES = [
    # params: the config's checks
    (
        "params-limit-text",
        dataset({"limit": "3"}, GOOD),
        "--params key limit: expected an integer or null, got the text '3'",
    ),
    ("params-limit-float", dataset({"limit": 2.0}, GOOD), "--params key limit: expected an int"),
    ("params-limit-zero", dataset({"limit": 0}, GOOD), "--params key limit: expected at least 1"),
    ("params-format", dataset({"format": "csv"}, GOOD), "--params key format: expected one of"),
    ("params-source-docs", dataset({"source_docs": "all"}, GOOD), "--params key source_docs:"),
    ("params-corpus-format", corpus({"format": "xml"}, "{}"), "--params key format: expected"),
    (
        "params-world-split",
        world({"questions": {"train": 0}}),
        "--params key questions.train: expected at least 1, got 0",
    ),
    ("params-world-people", world({"people": 2.5}), "--params key people: expected an integer"),
    ("params-world-rate", world({"multihop_rate": "high"}), "--params key multihop_rate:"),
    # data: file and line
    ("json", dataset(NQ, GOOD + '{"question": "Why?", "answer": [\n'), "{input}:2: invalid JSON"),
    ("not-object", dataset(NQ, GOOD + "[1, 2]\n"), "{input}:2: expected a JSON object, got list"),
    (
        "latin-1",
        dataset(
            NQ, GOOD.encode() + '{"question": "Caf\xe9?", "answer": ["a"]}\n'.encode("latin-1")
        ),
        "{input}:2: not UTF-8 text (byte 0xe9 at column 18)",
    ),
    ("utf-16", dataset(NQ, GOOD.encode("utf-16")), "{input}:1: the file is UTF-16"),
    (
        "empty-answer",
        dataset(NQ, GOOD + '{"question": "Why?", "answer": [""]}\n'),
        "{input}:2: record: answer[0] is an empty answer",
    ),
    (
        "blank-answer",
        dataset(NQ, '{"question": "Why?", "answer": "  "}\n'),
        "{input}:1: record: answer[0] is an empty answer",
    ),
    (
        "flashrag-empty",
        dataset({"format": "flashrag"}, '{"question": "q", "golden_answers": [""]}'),
        "{input}:1: record: golden_answers[0] is an empty answer",
    ),
    (
        "kilt-empty",
        dataset({"format": "kilt"}, '{"id": "k", "input": "q", "output": [{"answer": ""}]}'),
        "{input}:1: record 'k': output[0].answer[0] is an empty answer",
    ),
    (
        "kilt-provenance",
        dataset({"format": "kilt"}, '{"id": "k", "input": "q", "output": [{}]}'),
        "{input}:1: record 'k': no output[].answer",
    ),
    (
        "alce-empty",
        dataset({"format": "alce"}, '[{"question": "q", "qa_pairs": [{"short_answers": [""]}]}]'),
        "{input}: element 0: record 'input-0': qa_pairs[0].short_answers[0] is an empty answer",
    ),
    (
        "alce-not-array",
        dataset({"format": "alce"}, '[{"question": "q", "answers": ["a"]}, 3]'),
        "{input}: element 1: expected a JSON object, got int",
    ),
    (
        "no-question",
        dataset(NQ, '{"answer": ["a"]}\n'),
        "{input}:1: record has no field 'question'",
    ),
    (
        "empty-question",
        dataset(NQ, '{"question": " ", "answer": ["a"]}\n'),
        "{input}:1: record None has an empty 'question'",
    ),
    (
        "answer-number",
        dataset(NQ, '{"question": "q", "answer": 3}\n'),
        "{input}:1: record: field 'answer' should be list or str, got int",
    ),
    (
        "answer-item",
        dataset({"format": "ragtrain"}, '{"id": "a", "question": "q", "answers": [1]}\n'),
        "{input}:1: record 'a': answers[0] should be str, got int",
    ),
    (
        "duplicate-id",
        dataset({"format": "ragtrain"}, '{"id": "a", "question": "q", "answers": []}\n' * 2),
        "{input}:2: duplicate example id 'a' (first on line 1)",
    ),
    (
        "empty-id",
        dataset({"format": "ragtrain"}, '{"id": " ", "question": "q", "answers": []}\n'),
        "{input}:1: record has an empty 'id'",
    ),
    ("undetectable", dataset({}, '{"query": "q"}\n'), "{input}:1: cannot detect the QA format"),
    ("no-examples", dataset(NQ, "\n\n"), "{input}: no examples"),
    (
        "passage-empty",
        corpus({}, '{"_id": "p1", "text": "t"}\n{"_id": "p2", "title": "", "text": " "}\n'),
        "{input}:2: passage 'p2' is empty (no title, no text)",
    ),
    (
        "flashrag-passage-empty",
        corpus({"format": "flashrag"}, '{"id": "p1", "contents": ""}\n'),
        "{input}:1: passage 'p1' is empty",
    ),
    (
        "passage-latin-1",
        corpus({}, '{"_id": "p1", "text": "caf\xe9"}\n'.encode("latin-1")),
        "{input}:1: not UTF-8 text (byte 0xe9",
    ),
    (
        "passage-no-text",
        corpus({"format": "beir"}, '{"_id": "p1", "title": "T"}\n'),
        "{input}:1: record 'p1' has no field 'text'",
    ),
    (
        "passage-duplicate",
        corpus({}, '{"_id": "p", "text": "a"}\n{"_id": "p", "text": "b"}\n'),
        "{input}:2: duplicate passage id 'p'",
    ),
    (
        "passage-title",
        corpus({}, '{"_id": "p", "text": "a", "title": 3}\n'),
        "{input}:1: passage 'p': field 'title' should be str",
    ),
    ("corpus-empty", corpus({}, ""), "{input}: no passages: the corpus is empty"),
    (
        "corpus-undetectable",
        corpus({"format": "auto"}, '{"body": "b"}\n'),
        "{input}:1: cannot detect the corpus format",
    ),
]


@pytest.mark.parametrize(("case", "expected"), [c[1:] for c in STAGE_CASES],
                         ids=[c[0] for c in STAGE_CASES])  # fmt: skip
def test_a_stage_with_bad_params_or_data_is_one_line_at_the_key_or_line(
    tmp_path, capsys, case, expected
):
    stage, params, files = case
    line = run_stage(tmp_path, capsys, stage, params, **files)
    assert expected.format(input=tmp_path / "input.jsonl") in line


# --------------------------------------------------------------------------- faults


def test_an_input_that_is_a_folder_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    args = ["--input", str(tmp_path / "folder"), "--output", str(tmp_path / "out/e.jsonl")]
    assert stage_main(["dataset", "--params", "{}", *args, "--stats", "s.json"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()[-1:]
    assert "Is a directory" in line and str(tmp_path / "folder") in line
    assert not (tmp_path / "out").exists()


def test_an_output_under_a_file_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text(GOOD)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    args = ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "blocker/e.jsonl")]
    assert stage_main(["dataset", "--params", json.dumps(NQ), *args, "--stats", "s.json"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("ragtrain dataset: error: ") and "blocker" in line


def test_a_missing_input_is_one_line_naming_it(tmp_path, capsys):
    args = ["--input", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "out/e.jsonl")]
    assert stage_main(["dataset", "--params", json.dumps(NQ), *args, "--stats", "s.json"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == f"ragtrain dataset: error: {tmp_path / 'none.jsonl'}: file not found"


def test_a_utf8_file_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    out = tmp_path / "out"
    args = ["--input", str(path), "--output", str(out / "e.jsonl"), "--stats", str(out / "s.json")]
    assert stage_main(["dataset", "--params", json.dumps(NQ), *args]) == 0
    [example] = [json.loads(line) for line in (out / "e.jsonl").open()]
    assert example["question"] == "Who?"


# The count README.md's "Reliability" section gives.
N_CASES = len(CONFIG_CASES) + len(YAML_CASES) + len(STAGE_CASES) + 3 + 1  # + faults, missing


def test_the_readme_counts_the_cases():
    assert f"{N_CASES} bad-input cases" in (ROOT / "README.md").read_text()


# --------------------------------------------------------------------------- Snakemake

SNAKEMAKE_CASES = [
    (
        "k-float",
        yaml.safe_dump(edited({"retrievers.bm25.k": 2.0})),
        "config key retrievers.bm25.k: expected an integer, got 2.0",
    ),
    (
        "duplicate",
        "run: a\nrun: b\nmodels: {base: {hub: x/y}}\n",
        "config.yaml:2: key 'run' given twice in one map (first at line 1)",
    ),
    (
        "base-path",
        yaml.safe_dump(edited({"models.base": {"path": "no/such/folder"}})),
        "config key models.base.path: no such file or folder 'no/such/folder'",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in SNAKEMAKE_CASES],
                         ids=[c[0] for c in SNAKEMAKE_CASES])  # fmt: skip
def test_snakemake_stops_before_the_first_job_with_the_same_line(tmp_path, text, expected):
    """The same check in Snakemake: status 1, the line, no job started, nothing written."""
    (tmp_path / "config.yaml").write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--cores",
         "1", "--configfile", "config.yaml"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 1
    assert expected in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".snakemake") == ["config.yaml"]
