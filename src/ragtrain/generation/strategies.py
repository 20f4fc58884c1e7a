"""Sampling strategies of self-demonstrations: how each candidate answer is asked for.

A strategy is a system prompt (a template, or the prompt a `prompt_search` product
ranked `rank`), a user turn with or without the retrieved documents, `n` samples at
`temperature`, and an optional follow-up turn whose answer replaces the first (the
paper asks for a summary of each answer and keeps it). The paper's set (`paper`) is
nine: the three best prompts of a search without retrieval, the three best of a search
with retrieval, and a refusal-encouraging prompt with retrieval sampled three times,
each followed by the summary turn.

Whatever strategy drew an answer, the demonstration is trained on the product's own
prompt (`prompt` with the retrieved documents): the strategies only find good answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.prompt_search import _PREAMBLE

PAPER = "paper"
STRATEGY_DEFAULTS: dict[str, Any] = {
    "system": None,
    "search": None,
    "rank": 1,
    "retrieval": True,
    "user": None,  # docs_question with retrieval, question without
    "n": 1,
    "temperature": 1.0,
    "follow_up": None,
}
STRATEGY_DOCS = {
    "name": "the strategy's name (the tournament's win share is counted by it)",
    "system": "a system prompt's template, or",
    "search": "a `prompt_search` product: its prompt ranked `rank` (1: the best)",
    "rank": "which of the search's prompts",
    "retrieval": "whether the user turn shows the retrieved documents",
    "user": "the user turn's template (default `docs_question` / `question`)",
    "n": "samples", "temperature": "sampling temperature",
    "follow_up": "a second user turn's template (e.g. `summarize`); its answer is kept",
}  # fmt: skip
USER_TEMPLATES = {True: "docs_question", False: "question"}
REFUSE_TEMPLATE = "sys_refuse"
FOLLOW_UP = "summarize"


def paper_strategies(searches: dict[str, str]) -> list[dict]:
    """The paper's nine strategies over its two prompt searches (`rag`, `no_rag`)."""
    strategies = [
        {"name": f"{key}_{rank}", "search": searches[key], "rank": rank,
         "retrieval": key == "rag", "follow_up": FOLLOW_UP}
        for key in ("no_rag", "rag")
        for rank in (1, 2, 3)
    ]  # fmt: skip
    strategies.append(
        {"name": "refuse", "system": REFUSE_TEMPLATE, "retrieval": True, "n": 3,
         "follow_up": FOLLOW_UP}
    )  # fmt: skip
    return [{**STRATEGY_DEFAULTS, **s} for s in strategies]


def filled_strategies(node: dict) -> list[dict] | None:
    """A self-demos node's strategies with their defaults (None: the single prompt)."""
    strategies = node.get("strategies")
    if strategies is None:
        return None
    if strategies == PAPER:
        strategies = paper_strategies(node.get("searches") or {})
    filled = [{**STRATEGY_DEFAULTS, **s} for s in strategies]
    for s in filled:
        if s["user"] is None:
            s["user"] = USER_TEMPLATES[bool(s["retrieval"])]
    return filled


def check_strategies(strategies: Any, searches: Any) -> tuple[str, str] | None:
    """What is wrong with a node's `strategies` (key suffix, reason), or None."""
    if strategies is None:
        return None
    if strategies == PAPER:
        missing = {"rag", "no_rag"} - set(searches or {})
        if missing:
            return ("searches", f"strategies: {PAPER} needs searches.rag and searches.no_rag")
        return None
    if not isinstance(strategies, list) or not strategies:
        return ("strategies", f"expected {PAPER!r} or a non-empty list of strategies")
    names = set()
    for i, s in enumerate(strategies):
        key = f"strategies[{i}]"
        if not isinstance(s, dict):
            return (key, "expected a mapping")
        unknown = set(s) - set(STRATEGY_DOCS)
        if unknown:
            known = ", ".join(STRATEGY_DOCS)
            return (f"{key}.{sorted(unknown)[0]}", f"unknown key (known: {known})")
        if not isinstance(s.get("name"), str) or not s["name"]:
            return (f"{key}.name", "every strategy needs a name")
        if s["name"] in names:
            return (f"{key}.name", f"{s['name']!r} names two strategies")
        names.add(s["name"])
        if (s.get("system") is None) == (s.get("search") is None):
            return (key, "give exactly one of `system` (a template) and `search` (a product)")
        if not isinstance(s.get("n", 1), int) or s.get("n", 1) < 1:
            return (f"{key}.n", "expected a positive integer")
        if not isinstance(s.get("rank", 1), int) or s.get("rank", 1) < 1:
            return (f"{key}.rank", "expected a positive integer (1: the best prompt)")
    return None


def templates_of(strategies: list[dict]) -> list[str]:
    """The template names the strategies read (system, user, follow-up)."""
    names = []
    for s in strategies:
        names += [n for n in (s.get("system"), s["user"], s.get("follow_up")) if n]
    return list(dict.fromkeys(names))


def searches_of(strategies: list[dict]) -> list[str]:
    return list(dict.fromkeys(s["search"] for s in strategies if s.get("search")))


@dataclass(frozen=True)
class Strategy:
    """A strategy ready to sample: its system prompt's text and its templates."""

    name: str
    system: str | None
    user: PromptTemplate
    retrieval: bool
    n: int
    temperature: float
    follow_up: PromptTemplate | None

    def conversation(self, example: dict) -> list[dict[str, str]]:
        shown = example if self.retrieval else {**example, "docs": []}
        turns = [{"role": "user", "content": self.user.render(shown)}]
        if self.system:
            turns.insert(0, {"role": "system", "content": self.system})
        return turns


def load_strategies(
    strategies: list[dict], templates: dict[str, str], searches: dict[str, list[dict]]
) -> list[Strategy]:
    """Strategies with their texts: `templates` maps a template's name to its file,
    `searches` a prompt search's name to its records (best first)."""

    def template(name: str) -> PromptTemplate:
        if name not in templates:
            raise ValueError(f"strategy template {name!r}: not given (--template)")
        return PromptTemplate(templates[name])

    loaded = []
    for s in strategies:
        if s.get("search"):
            ranked = searches.get(s["search"])
            if ranked is None:
                raise ValueError(f"strategy {s['name']!r}: search {s['search']!r} not given")
            if len(ranked) < s["rank"]:
                raise ValueError(
                    f"strategy {s['name']!r}: rank {s['rank']}, but search {s['search']!r}"
                    f" found {len(ranked)} prompts"
                )
            system = ranked[s["rank"] - 1]["prompt"]
        else:
            system = template(s["system"]).render({})
        loaded.append(
            Strategy(
                name=s["name"], system=system, user=template(s["user"]),
                retrieval=bool(s["retrieval"]), n=s["n"], temperature=s["temperature"],
                follow_up=template(s["follow_up"]) if s.get("follow_up") else None,
            )
        )  # fmt: skip
    return loaded


def parse_follow_up(text: str) -> str:
    """A follow-up's answer: a leading `Here is ...:` removed."""
    return _PREAMBLE.sub("", text.strip(), count=1).strip()
