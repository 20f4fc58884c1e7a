"""Security: remote model code off unless the config turns it on, safe weight formats,
config values quoted on their way to a shell, secrets kept out of logs."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from ragtrain.core.security import (
    MODEL_META,
    REDACTED,
    RedactSecrets,
    folder_trusts_remote_code,
    install_redaction,
    trust_remote_code,
    write_model_meta,
)
from ragtrain.graph.config import ConfigError, prepare
from tests.conftest import ROOT

SOURCES = sorted((ROOT / "src" / "ragtrain").rglob("*.py"))
BENCH = sorted((ROOT / "bench").rglob("*.py"))
RULES = [*sorted((ROOT / "workflow").rglob("*.smk")), ROOT / "Snakefile"]
SECRET = "hf_secretvalue123"
# A config value that tries every way out of a shell word: quotes, `;`, `$(...)`, backticks.
HOSTILE = "x'; touch pwned; $(touch pwned2) `touch pwned3` \"; touch pwned4"


def _trees(files):
    for path in files:
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _calls(files):
    for path, tree in _trees(files):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                yield path, node


def _name(func: ast.expr) -> str:
    """`torch.load` for torch.load(...), `from_pretrained` for X.from_pretrained(...)."""
    if isinstance(func, ast.Attribute):
        inner = _name(func.value)
        return f"{inner}.{func.attr}" if inner else func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


# ------------------------------------------------------------------ remote model code


def test_no_source_turns_remote_code_on_literally():
    found = []
    for path, tree in _trees(SOURCES + BENCH):
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.keyword)
                and node.arg == "trust_remote_code"
                and isinstance(node.value, ast.Constant)
                and node.value.value is not False
            ):
                found.append(_where(path, node.value))
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "trust_remote_code"
                        and isinstance(value, ast.Constant)
                        and value.value is not False
                    ):
                        found.append(_where(path, value))
    for path in RULES:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"trust_remote_code\W+true", line, re.IGNORECASE):
                found.append(f"{path.relative_to(ROOT)}:{i}")
    assert not found, f"trust_remote_code turned on in code: {found}"


# Calls that load a model or tokenizer, and so may run a model folder's own code.
LOADERS = re.compile(r"(^|\.)(from_pretrained|SentenceTransformer|ColBERT|LLM|CrossEncoder)$")


def test_every_model_load_passes_trust_remote_code():
    missing = [
        f"{_where(path, call)} {_name(call.func)}"
        for path, call in _calls(SOURCES)
        if LOADERS.search(_name(call.func))
        # a PEFT adapter is weights and a config, loaded onto a model loaded here
        and _name(call.func) != "PeftModel.from_pretrained"
        # trust_remote_code=..., or **kwargs that carry it
        and not any(k.arg in ("trust_remote_code", None) for k in call.keywords)
    ]
    assert not missing, f"model loads without an explicit trust_remote_code: {missing}"


def test_the_setting_comes_from_the_config_or_the_model_folder(tmp_path):
    assert folder_trusts_remote_code(tmp_path) is False  # a folder that records nothing
    write_model_meta(tmp_path, True)
    assert folder_trusts_remote_code(tmp_path) is True
    assert trust_remote_code(tmp_path, False) is False  # the config's own setting wins
    assert trust_remote_code("some/hub-id") is False
    with pytest.raises(ValueError, match="trust_remote_code"):
        trust_remote_code("some/hub-id", "yes")
    (tmp_path / MODEL_META).write_text('{"trust_remote_code": "true"}')
    assert folder_trusts_remote_code(tmp_path) is False  # only a JSON true turns it on


def _tiny_config() -> dict:
    cfg = yaml.safe_load((ROOT / "tests" / "tiny.yaml").read_text())
    cfg["models"]["base"]["path"] = "/nonexistent/model"
    return cfg


def test_config_defaults_are_off_and_trained_models_inherit():
    cfg = prepare(_tiny_config())
    assert cfg["models"]["base"]["trust_remote_code"] is False
    assert cfg["retrievers"]["dense"]["trust_remote_code"] is False
    bad = _tiny_config()
    bad["models"]["sft"]["trust_remote_code"] = True
    with pytest.raises(ConfigError, match=r"models\.sft\.trust_remote_code.*init"):
        prepare(bad)


def _custom_code_model(tiny_model: Path, folder: Path, marker: Path) -> Path:
    """The tiny Llama as a model that ships its own code: an `auto_map` in config.json
    pointing at evil.py, which leaves `marker` behind when it is imported."""
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil"
    config["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModelForCausalLM": "evil.EvilForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(
        textwrap.dedent(f"""\
            from pathlib import Path

            from transformers import LlamaConfig, LlamaForCausalLM

            Path({str(marker)!r}).touch()


            class EvilConfig(LlamaConfig):
                model_type = "evil"


            class EvilForCausalLM(LlamaForCausalLM):
                config_class = EvilConfig
            """)
    )
    return folder


LOAD_SCRIPT = """
import json, sys
from pathlib import Path

from ragtrain.generation.engine import HFGenerator
from ragtrain.training.models import import_base_model
from ragtrain.core.security import MODEL_META

source, out, marker = map(Path, sys.argv[1:])
result = {}
params = {"path": str(source), "dtype": "float32", "revision": None}
try:
    import_base_model({**params, "trust_remote_code": False}, out / "off")
    result["off"] = "loaded"
except ValueError as e:
    result["off"] = str(e)
result["marker_after_off"] = marker.exists()
import_base_model({**params, "trust_remote_code": True}, out / "on")
result["marker_after_on"] = marker.exists()
result["meta"] = json.loads((out / "on" / MODEL_META).read_text())
# A folder the workflow wrote: its recorded setting decides (inherited downstream).
generation = {"seed": 0, "dtype": "float32", "batch_size": 1}
HFGenerator(str(out / "on"), generation)
result["downstream_on"] = "loaded"
(out / "on" / MODEL_META).write_text(json.dumps({"trust_remote_code": False}))
try:
    HFGenerator(str(out / "on"), generation)
    result["downstream_off"] = "loaded"
except ValueError as e:
    result["downstream_off"] = str(e)
print("RESULT " + json.dumps(result))
"""


@pytest.mark.slow
def test_custom_model_code_runs_only_when_the_config_turns_it_on(tiny_model, tmp_path):
    marker = tmp_path / "custom-code-ran"
    source = _custom_code_model(tiny_model, tmp_path / "evil-model", marker)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # where transformers copies a model's code: this test's own, not ~/.cache
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": str(ROOT / "src"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(source), str(tmp_path / "out"), str(marker)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    # Off (the default): a clear error naming the setting, and the code never ran.
    assert "trust_remote_code: true" in result["off"]
    assert not result["marker_after_off"]
    assert not (tmp_path / "out" / "off").exists()
    # On for this model: its code ran, and the model folder records the setting.
    assert result["marker_after_on"]
    assert result["meta"] == {"trust_remote_code": True}
    assert result["downstream_on"] == "loaded"
    assert "trust_remote_code" in result["downstream_off"]


# ------------------------------------------------------------------ weight formats


def test_no_unsafe_deserialisation_in_the_sources():
    found = []
    for path, call in _calls(SOURCES + BENCH):
        name = _name(call.func)
        kwargs = {k.arg: k.value for k in call.keywords}
        if name == "torch.load":
            value = kwargs.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                found.append(f"{_where(path, call)} {name} without weights_only=True")
        if re.search(r"(^|\.)(pickle|dill|cloudpickle|joblib)\.(load|loads|Unpickler)$", name):
            found.append(f"{_where(path, call)} {name}")
        if name.endswith("read_pickle"):
            found.append(f"{_where(path, call)} {name}")
        for key in ("allow_pickle",):
            value = kwargs.get(key)
            if isinstance(value, ast.Constant) and value.value is True:
                found.append(f"{_where(path, call)} {name}({key}=True)")
        for key in ("safe_serialization", "use_safetensors"):
            value = kwargs.get(key)
            if isinstance(value, ast.Constant) and value.value is False:
                found.append(f"{_where(path, call)} {name}({key}=False)")
    for path, tree in _trees(SOURCES + BENCH):
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names):
                    found.append(f"{_where(path, node)} imports a pickle module")
    assert not found, found


@pytest.mark.slow
def test_a_trained_model_folder_holds_safetensors_and_inherits_the_setting(tiny_model, tmp_path):
    from ragtrain.training.sft_dpo import train
    from tests.test_train import params, sft_file

    # The base turned remote code on (harmless here: the tiny Llama has no code of its own).
    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    write_model_meta(base, True)
    out = tmp_path / "sft"
    train(
        params("sft", epochs=1),
        base,
        sft_file(tmp_path / "train.jsonl", 4),
        None,
        out,
        tmp_path / "work",
    )
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert "model.safetensors" in files
    assert "adapter/adapter_model.safetensors" in files
    unsafe = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    assert not unsafe, unsafe
    assert json.loads((out / MODEL_META).read_text()) == {"trust_remote_code": True}


# ------------------------------------------------------------------ config values and the shell


def snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _hostile_config(tmp_path: Path, model_path: Path) -> Path:
    """tests/tiny.yaml with the hostile string in a model path, a free-text setting, an
    encoder (hub id) and the file name of a QA dataset that is evaluated."""
    cfg = yaml.safe_load((ROOT / "tests" / "tiny.yaml").read_text())
    cfg["models"]["base"]["path"] = str(model_path)
    # (the SFT data's refusal: a free-text key its kind takes; a judge takes none)
    cfg["products"]["sft_data"]["refusal"] = HOSTILE
    cfg["retrievers"]["dense"]["encoder"] = HOSTILE
    data = tmp_path / "data"
    data.mkdir()
    qa = data / f"qa {HOSTILE}.jsonl"
    qa.write_text('{"id": "q1", "question": "Who?", "answers": ["Ada"]}\n')
    cfg["datasets"]["file"] = {"path": str(qa)}
    cfg["evaluate"].append({"models": ["base"], "datasets": ["file"], "retrieval": ["none"]})
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _quote_states(command: str) -> list[str]:
    """For each character of a POSIX shell command: how it is quoted ('single', 'double'
    or 'none'), as the shell reads it."""
    states, state, i = [], "none", 0
    while i < len(command):
        c = command[i]
        if state == "single":
            if c == "'":
                state = "none"
            states.append("single" if state == "single" else "none")
        elif state == "double":
            if c == "\\" and i + 1 < len(command):
                states += ["double", "double"]
                i += 2
                continue
            if c == '"':
                state = "none"
            states.append("double")
        else:
            if c == "\\" and i + 1 < len(command):
                states += ["escaped", "escaped"]
                i += 2
                continue
            if c in "'\"":
                state = "single" if c == "'" else "double"
            states.append("none")
        i += 1
    return states


def _hostile_spans(command: str) -> set[int]:
    """Positions of the command that belong to the hostile string, as written there."""
    spans: set[int] = set()
    quoted = [shlex.quote(HOSTILE)[1:-1], shlex.quote(json.dumps(HOSTILE)[1:-1])[1:-1]]
    for form in {HOSTILE, *quoted}:
        for m in re.finditer(re.escape(form), command):
            spans.update(range(m.start(), m.end()))
    return spans


def _shell_commands(dry_run: str) -> list[str]:
    return [
        line.removeprefix("Shell command: ")
        for line in dry_run.splitlines()
        if line.startswith("Shell command: ")
    ]


def _inside_one_quoted_word(command: str) -> None:
    """Every shell-active piece of the hostile string sits inside single quotes, and
    shlex keeps the whole string within one word (as is, or JSON-escaped in --params)."""
    states = _quote_states(command)
    active = list(re.finditer(r"touch pwned\d?|\$\(|`|;", command))
    for match in active:
        if "pwned" in match.group() or match.start() in _hostile_spans(command):
            assert all(s == "single" for s in states[match.start() : match.end()]), (
                match.group(),
                command,
            )
    words = shlex.split(command)
    hostile_words = [w for w in words if "pwned" in w]
    assert hostile_words, command
    escaped = json.dumps(HOSTILE)[1:-1]
    for word in hostile_words:
        assert HOSTILE in word or escaped in word, (word, command)
    # tokenised as a shell would (operators apart), no `;`, `&&`, `|` or `>` stray from
    # a value: the only operators are the redirections the rules write
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    operators = [t for t in lexer if t and set(t) <= set("();<>|&")]
    assert set(operators) <= {">", "2>&1", ">&", "&"}, (operators, command)


def test_hostile_config_values_reach_the_shell_as_single_quoted_words(tmp_path):
    configfile = _hostile_config(tmp_path, tmp_path / "models" / HOSTILE)
    proc = snakemake(
        "-n", "-p", "--configfile", str(configfile), "--directory", str(tmp_path / "run"),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    commands = _shell_commands(proc.stdout)
    assert len(commands) >= 20, proc.stdout[-3000:]
    hostile = [c for c in commands if "pwned" in c]
    # the dataset's file, the base model's path, the SFT data's refusal, the dense encoder
    assert len(hostile) >= 5, hostile
    for command in hostile:
        _inside_one_quoted_word(command)
    assert not list(tmp_path.rglob("pwned*"))


@pytest.mark.slow
@pytest.mark.e2e
def test_hostile_values_run_through_real_rules_without_reaching_a_shell(tiny_model, tmp_path):
    shutil.copytree(tiny_model, tmp_path / "models" / HOSTILE)
    configfile = _hostile_config(tmp_path, tmp_path / "models" / HOSTILE)
    run = tmp_path / "run"
    targets = ["results/tiny/data/file/examples.jsonl", "results/tiny/models/base"]
    proc = snakemake(
        "--cores", "1", "--configfile", str(configfile), "--directory", str(run), *targets,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run / "results/tiny/models/base/model.safetensors").is_file()
    examples = (run / "results/tiny/data/file/examples.jsonl").read_text()
    assert '"q1"' in examples
    for where in (tmp_path, ROOT, Path.cwd()):
        assert not list(where.glob("pwned*")), where
    assert not list(tmp_path.rglob("pwned*"))


def test_a_node_name_with_shell_characters_is_rejected_naming_the_key(tmp_path):
    cfg = yaml.safe_load((ROOT / "tests" / "tiny.yaml").read_text())
    cfg["models"]["base"]["path"] = str(tmp_path)
    cfg["models"]["sft;touch pwned"] = cfg["models"].pop("sft")
    configfile = tmp_path / "bad.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    proc = snakemake(
        "-n", "--configfile", str(configfile), "--directory", str(tmp_path / "run"),
        cwd=tmp_path,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config key models.sft;touch pwned: a node's name is" in out
    assert "got the text 'sft;touch pwned'" in out
    assert not (tmp_path / "run" / "results").exists()
    assert not list(tmp_path.rglob("pwned*"))


# ------------------------------------------------------------------ secrets


def _schema_keys(node, found: set[str]) -> set[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                found.update(value)
            _schema_keys(value, found)
    elif isinstance(node, list):
        for item in node:
            _schema_keys(item, found)
    return found


def test_the_config_has_no_key_for_a_token():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    keys = _schema_keys(schema, set())
    assert "trust_remote_code" in keys
    secret_words = {"token", "secret", "password", "apikey", "credentials", "wandb"}
    bad = [k for k in keys if secret_words & set(k.lower().split("_")) or "api_key" in k]
    assert not bad, bad


def test_training_reports_to_nothing():
    """W&B and the like would send the run (and read WANDB_API_KEY): report_to is "none",
    except where ragtrain.training.tracking turns on the trackers a node names (W&B
    offline unless the user set WANDB_MODE), and by default a node names none."""
    from ragtrain.training.sft_dpo import TRAIN_DEFAULTS
    from ragtrain.training.tracking import trainer_kwargs

    assert all(defaults["tracking"] == [] for defaults in TRAIN_DEFAULTS.values())
    assert trainer_kwargs({"tracking": []}, Path("unused")) == {"report_to": "none"}
    found = []
    tracking = ROOT / "src" / "ragtrain" / "training" / "tracking.py"
    for path, tree in _trees([p for p in SOURCES if p != tracking]):
        for node in ast.walk(tree):
            values = []
            if isinstance(node, ast.keyword) and node.arg == "report_to":
                values.append(node.value)
            if isinstance(node, ast.Dict):
                values += [
                    v
                    for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant) and k.value == "report_to"
                ]
            found += [
                _where(path, v)
                for v in values
                if not (isinstance(v, ast.Constant) and v.value == "none")
            ]
    assert not found, found


def test_no_output_or_log_holds_the_environment():
    for path in SOURCES:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if "environ" in line and not line.lstrip().startswith("#"):
                assert not re.search(r"write_json|json\.dump|log\.|print\(|write_text", line), (
                    f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
                )


def test_the_redaction_filter_hides_secrets_in_messages_and_tracebacks(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-0123456789")
    stream = io.StringIO()
    logger = logging.getLogger("ragtrain.test_security")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        install_redaction(logger)
        install_redaction(logger)  # once is enough
        assert sum(isinstance(f, RedactSecrets) for f in handler.filters) == 1
        logger.warning("token %s and key %s", SECRET, "wandb-key-0123456789")
        try:
            raise RuntimeError(f"bad token {SECRET}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert SECRET not in text and "wandb-key" not in text
    assert text.count(REDACTED) == 3
    assert "RuntimeError: bad token [REDACTED]" in text


LEAKY_STAGE = """
import logging, os, sys
import ragtrain.__main__ as cli
import ragtrain.stages.data as data_stages

stage = data_stages.cmd_dataset

def leaky(args):
    logging.getLogger("ragtrain.leaky").info("authenticating with %s", os.environ["HF_TOKEN"])
    stage(args)

data_stages.cmd_dataset = leaky
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_stage_never_logs_the_token(tmp_path):
    env = {
        **os.environ,
        "HF_TOKEN": SECRET,
        "HUGGING_FACE_HUB_TOKEN": SECRET,
        "PYTHONPATH": str(ROOT / "src"),
    }
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"id": "q1", "question": "Who?", "answers": ["Ada"]}\n')

    def stage(*args):
        out = tmp_path / "out"
        return subprocess.run(
            [sys.executable, "-c", LEAKY_STAGE, "-v", "dataset", "--params", "{}", *args,
             "--output", str(out / "examples.jsonl"), "--stats", str(out / "stats.json")],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    ok = stage("--input", str(qa))
    assert ok.returncode == 0, ok.stderr
    assert "authenticating with [REDACTED]" in ok.stderr
    # A failing stage: its one-line error and its (verbose) traceback name a path that
    # holds the token.
    failed = stage("--input", str(tmp_path / SECRET / "missing.jsonl"))
    assert failed.returncode == 1
    assert f"{REDACTED}/missing.jsonl: file not found" in failed.stderr
    assert "Traceback" in failed.stderr
    outputs = [p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file()]
    for text in [ok.stdout, ok.stderr, failed.stdout, failed.stderr, *outputs]:
        assert SECRET not in text
