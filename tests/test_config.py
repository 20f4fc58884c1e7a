import copy

import pytest
import yaml

from ragtrain.graph.config import ConfigError, prepare
from tests.conftest import ROOT

BASE = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def config(**changes):
    cfg = copy.deepcopy(BASE)
    cfg.update(changes)
    return cfg


def test_demo_config_fills_node_defaults():
    cfg = prepare(BASE)
    assert cfg["retrievers"]["bm25"]["k1"] == 1.5  # kind default
    assert cfg["retrievers"]["bm25"]["k"] == 3  # given
    assert cfg["models"]["base"]["kind"] == "base"
    assert cfg["models"]["base"]["trust_remote_code"] is False
    assert cfg["worlds"]["world"]["questions"]["test"] == 100
    assert cfg["datasets"]["test"]["format"] == "auto"


def test_evaluate_expands_to_one_node_per_model_dataset_retrieval():
    cfg = prepare(BASE)
    got = {(e["model"], e["dataset"], e["retrieval"], e["prompt"]) for e in cfg["evaluations"]}
    assert got == {
        ("base", "test", "bm25", "rag"),
        ("sft", "test", "bm25", "rag"),
        ("dpo", "test", "bm25", "rag"),
    }
    closed = prepare(
        config(evaluate=[{"models": ["base"], "datasets": ["test"], "retrieval": ["none"]}])
    )
    assert closed["evaluations"][0]["prompt"] == "closed_book"
    # Per-entry generation overrides merge over the global generation defaults.
    cfg2 = prepare(config(evaluate=[{**BASE["evaluate"][0], "generation": {"max_new_tokens": 5}}]))
    gen = cfg2["evaluations"][0]["generation"]
    assert gen["max_new_tokens"] == 5
    assert gen["backend"] == "vllm"


@pytest.mark.parametrize(
    ("section", "name", "field", "value", "key"),
    [
        ("retrievers", "bm25", "corpus", "wiki", "retrievers.bm25.corpus"),
        ("corpora", "world", "world", "mars", "corpora.world.world"),
        ("datasets", "test", "split", "holdout", "datasets.test.split"),
    ],
)
def test_unknown_name_names_the_key(section, name, field, value, key):
    cfg = copy.deepcopy(BASE)
    cfg[section][name][field] = value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        prepare(cfg)
    assert repr(value) in str(err.value)


def test_unknown_name_in_evaluate():
    cfg = config(evaluate=[{"models": ["rlhf"], "datasets": ["test"], "retrieval": ["none"]}])
    with pytest.raises(ConfigError, match=r"evaluate\[0\]\.models.*'rlhf'"):
        prepare(cfg)
    cfg = config(evaluate=[{"models": ["base"], "datasets": ["test"], "retrieval": ["splade"]}])
    with pytest.raises(ConfigError, match=r"evaluate\[0\]\.retrieval.*'splade'"):
        prepare(cfg)


def test_cycle_is_rejected():
    cfg = copy.deepcopy(BASE)
    # (trained models: a base model has no `init`, and saying so is an error of its own)
    cfg["models"]["a"] = {"kind": "sft", "init": "b", "data": "sft_data"}
    cfg["models"]["b"] = {"kind": "sft", "init": "a", "data": "sft_data"}
    with pytest.raises(ConfigError, match=r"cycle: a -> b -> a"):
        prepare(cfg)


@pytest.mark.parametrize(
    ("section", "name", "key", "kind"),
    [
        ("models", "sft", "kl_coef", "sft model"),
        ("models", "sft", "num_generations", "sft model"),
        ("models", "base", "init", "base model"),
        ("products", "judged", "beam", "judge product"),
        ("retrievers", "bm25", "encoder", "bm25 retriever"),
        ("corpora", "world", "k", "corpus"),
    ],
)
def test_a_key_foreign_to_the_kind_names_node_key_and_kind(section, name, key, kind):
    cfg = copy.deepcopy(BASE)
    cfg[section][name][key] = 1
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    message = str(err.value)
    assert message.startswith(f"config key {section}.{name}.{key}: not a key of a {kind}")
    assert "\n" not in message


def test_a_node_needs_exactly_one_source():
    cfg = copy.deepcopy(BASE)
    cfg["models"]["base"]["hub"] = "org/model"
    with pytest.raises(ConfigError, match=r"models\.base.*exactly one of gguf, path, hub"):
        prepare(cfg)


def test_top_level_seed_is_the_default_of_worlds_and_generation():
    cfg = copy.deepcopy(BASE)
    cfg["seed"] = 7
    cfg["worlds"]["world"].pop("seed", None)
    cfg["generation"].pop("seed", None)
    prepared = prepare(cfg)
    assert prepared["worlds"]["world"]["seed"] == 7
    assert prepared["evaluations"][0]["generation"]["seed"] == 7


def test_bad_world_values_fail_at_config_time():
    cfg = copy.deepcopy(BASE)
    cfg["worlds"]["world"]["multihop_rate"] = 0.9
    with pytest.raises(ConfigError, match=r"worlds\.world: rates must"):
        prepare(cfg)


def test_world_questions_replace_the_default_splits():
    cfg = copy.deepcopy(BASE)
    cfg["worlds"]["world"]["questions"] = {"eval": 20}
    cfg["datasets"] = {"eval": {"world": "world", "split": "eval"}}
    cfg["products"] = {}
    cfg["models"] = {"base": BASE["models"]["base"]}
    cfg["evaluate"] = [{"models": ["base"], "datasets": ["eval"], "retrieval": ["none"]}]
    assert prepare(cfg)["worlds"]["world"]["questions"] == {"eval": 20}


def test_an_evaluation_listed_twice_is_rejected():
    entry = {"models": ["base"], "datasets": ["test"], "retrieval": ["bm25", "none"]}
    cfg = config(evaluate=[entry, {**entry, "retrieval": ["none"]}])
    with pytest.raises(ConfigError, match=r"evaluate\[1\].*base on test with none.*evaluate\[0\]"):
        prepare(cfg)


def test_prompt_templates_must_exist():
    cfg = config(evaluate=[{**BASE["evaluate"][0], "prompt": "cot"}])
    with pytest.raises(ConfigError, match=r"evaluate\[0\]\.prompt: no template cot\.jinja"):
        prepare(cfg, prompts_dir=ROOT / "resources" / "prompts")
    assert prepare(BASE, prompts_dir=ROOT / "resources" / "prompts")["evaluations"]


def test_trained_models_and_products_get_their_kind_defaults():
    cfg = prepare(BASE)
    sft, dpo = cfg["models"]["sft"], cfg["models"]["dpo"]
    assert sft["finetune"] == "lora" and sft["lora"]["dropout"] == 0.05
    assert dpo["beta"] == 0.1 and dpo["loss_type"] == "sigmoid"
    assert sft["seed"] == dpo["seed"] == BASE["seed"]
    demos = cfg["products"]["demos"]
    # The product's sampling settings over the run's generation settings.
    assert demos["generation"]["temperature"] == 0.7
    assert demos["generation"]["backend"] == "vllm"
    assert demos["generation"]["max_new_tokens"] == BASE["generation"]["max_new_tokens"]
    assert cfg["products"]["pairs"]["gold_fallback"] is True
    assert cfg["products"]["judged"]["seed"] == BASE["seed"]  # which questions are held out
    assert "seed" not in cfg["models"]["base"]  # a base model's params stay as they were


@pytest.mark.parametrize(
    ("section", "name", "field", "value", "message"),
    [
        (
            "models",
            "dpo",
            "data",
            "sft_data",
            r"models\.dpo\.data: a dpo model trains on a"
            r" preference_pairs or query_preferences\b.* product, not 'sft_data'",
        ),
        ("models", "sft", "data", "nothing", r"models\.sft\.data: unknown product 'nothing'"),
        ("models", "sft", "init", None, r"models\.sft\.init: a sft model needs init"),
        (
            "products",
            "sft_data",
            "from",
            "demos",
            r"products\.sft_data\.from: a sft_data product"
            r" is made from a judge or tournament product",
        ),
        ("products", "demos", "retrieval", "splade", r"products\.demos\.retrieval: unknown"),
        ("products", "demos", "model", "gpt", r"products\.demos\.model: unknown model 'gpt'"),
        ("products", "demos", "prompt", "missing", r"products\.demos\.prompt: no template"),
        ("products", "judged", "kind", "ranker", r"products\.judged\.kind: expected one of"),
    ],
)
def test_bad_product_and_training_references_name_the_key(section, name, field, value, message):
    cfg = copy.deepcopy(BASE)
    if value is None:
        del cfg[section][name][field]
    else:
        cfg[section][name][field] = value
    with pytest.raises(ConfigError, match=message):
        prepare(cfg, prompts_dir=ROOT / "resources" / "prompts")


def test_self_demos_may_sample_closed_book():
    cfg = copy.deepcopy(BASE)
    cfg["products"]["demos"]["retrieval"] = "none"
    assert prepare(cfg)["products"]["demos"]["retrieval"] == "none"


def test_training_cycle_is_rejected():
    cfg = copy.deepcopy(BASE)
    cfg["models"]["sft"]["init"] = "dpo"
    with pytest.raises(ConfigError, match=r"cycle: (sft -> dpo -> sft|dpo -> sft -> dpo)"):
        prepare(cfg)


def test_a_model_sampling_its_own_training_data_is_a_cycle():
    cfg = copy.deepcopy(BASE)
    cfg["products"]["demos"]["model"] = "dpo"
    with pytest.raises(
        ConfigError,
        match=r"cycle: products\.demos -> models\.dpo -> .*"
        r" -> products\.demos",
    ):
        prepare(cfg)


def test_closed_book_self_demos_default_to_the_closed_book_prompt():
    cfg = copy.deepcopy(BASE)
    cfg["products"]["demos"]["retrieval"] = "none"
    del cfg["products"]["demos"]["prompt"]
    assert prepare(cfg)["products"]["demos"]["prompt"] == "closed_book"


CONFIGS = sorted(
    p
    for p in [
        *ROOT.glob("config/*.yaml"),
        *ROOT.glob("config/paper/*.yaml"),
        *ROOT.glob("tests/tiny*.yaml"),
    ]
    if p.name != "tiny_backtracking.yaml"  # its published files are filled in by its test
)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_node_the_config_fills_passes_its_stage_params_check(path):
    """What Snakemake passes a stage (the filled node) passes the checks of a stage run
    alone: a default the schema refuses would stop every job of its kind."""
    from ragtrain.graph.config import check_config, check_params, load_config_file
    from ragtrain.graph.kinds import SECTIONS, kind_of

    cfg = load_config_file(path)
    check_config(cfg)
    prepared = prepare(cfg, prompts_dir=ROOT / "resources" / "prompts")
    for section in SECTIONS:
        for node in prepared[section].values():
            if kind_of(section, node).stage:
                check_params(kind_of(section, node).stage, copy.deepcopy(node))


def test_the_stopword_languages_are_bm25s_s():
    import bm25s.tokenization

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    languages = schema["properties"]["retrievers"]["additionalProperties"]["properties"]
    for language in languages["stopwords"]["enum"]:
        assert bm25s.tokenization._infer_stopwords(language) is not None
    with pytest.raises(ValueError):
        bm25s.tokenization._infer_stopwords("klingon")


def test_an_integer_field_refuses_a_float_and_a_number_written_1e_4_is_one():
    from ragtrain.graph.config import check_config

    cfg = copy.deepcopy(BASE)
    cfg["models"]["sft"]["learning_rate"] = "1e-4"  # as YAML 1.1 reads it
    check_config(cfg)
    assert cfg["models"]["sft"]["learning_rate"] == 1e-4
    cfg["retrievers"]["bm25"]["k"] = 2.0
    with pytest.raises(ConfigError, match=r"retrievers\.bm25\.k: expected an integer, got 2\.0"):
        check_config(cfg)
