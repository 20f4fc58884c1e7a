"""A judge's tournament over each question's candidate answers (self-demonstrations).

As in the self-demonstrations paper: a `pick` judge sees `bracket` candidates at a time
(3 by default, so 9 -> 3 -> 1) and names the best; bracket winners meet in the next
round until one is left. Each question's candidates are shuffled with a seed of its own
before the first round, so no strategy holds a fixed position and the judge's taste for
a position falls on every strategy alike. A bracket of one is a bye. A bracket whose
verdict no retry could parse (the judge's `unparsed: drop`) leaves its question
unresolved: the question is dropped and counted. Optionally the gold answer joins as a
candidate (strategy `gold`).

The winner is the demonstration (SFT); the losers are the rejected answers of preference
pairs: every loser, or only those out in the first round (`rejected`).
"""

from __future__ import annotations

import random
import statistics
from collections import Counter

from ragtrain.core.seeds import DEFAULT_SEED, stable_seed
from ragtrain.judges.model import ModelJudge, verdict_stats

GOLD = "gold"
REJECTED = ("all", "first_round")
TOURNAMENT_DEFAULTS = {
    "bracket": 3,
    "gold": False,
    "rejected": "all",
    "docs": 4,
    "dev_fraction": 0.1,
    "seed": DEFAULT_SEED,
}


def candidates_of(record: dict, gold: bool) -> list[dict]:
    """A sample record's candidates: its non-empty samples (and its gold answer)."""
    found = [
        {"text": s["text"].strip(), "strategy": s.get("strategy", "sample"), "index": k}
        for k, s in enumerate(record["samples"])
        if s["text"].strip()
    ]
    if gold and record.get("answers"):
        found.append({"text": record["answers"][0], "strategy": GOLD, "index": -1})
    return found


def run_tournament(records: list[dict], judge: ModelJudge, params: dict) -> tuple[list[dict], dict]:
    """(one result per resolved question, stats). A result holds the winner, the losers
    with the round each went out in, and every bracket's verdict."""
    params = {**TOURNAMENT_DEFAULTS, **params}
    size = params["bracket"]
    if not 2 <= size <= 9:
        raise ValueError(f"bracket: expected 2 to 9 candidates per bracket, got {size}")
    if params["rejected"] not in REJECTED:
        raise ValueError(f"rejected: expected one of {REJECTED}, got {params['rejected']!r}")
    state = {}
    for record in records:
        pool = candidates_of(record, params["gold"])
        random.Random(stable_seed(params["seed"], record["id"])).shuffle(pool)
        state[record["id"]] = {
            "alive": pool, "out": [], "brackets": [], "unresolved": False, "n": len(pool)
        }  # fmt: skip
    all_verdicts: list[dict] = []
    byes = 0
    round_ = 0
    while True:
        round_ += 1
        items, where = [], []
        for record in records:
            s = state[record["id"]]
            if s["unresolved"] or len(s["alive"]) <= 1:
                continue
            brackets = [s["alive"][i : i + size] for i in range(0, len(s["alive"]), size)]
            s["next"] = []
            for b, bracket in enumerate(brackets):
                if len(bracket) == 1:
                    s["next"].append(bracket[0])
                    byes += 1
                    continue
                items.append(
                    {
                        "id": f"{record['id']}/round{round_}/bracket{b}",
                        "question": record["question"],
                        # Renumbered 1..k in the shuffled order.
                        "candidates": [c["text"] for c in bracket],
                        "answers": record.get("answers", []),
                        "docs": record.get("docs", [])[: params["docs"]],
                    }
                )
                where.append((record["id"], bracket))
        if not items:
            break
        verdicts = judge.judge(items)
        all_verdicts += verdicts
        for (qid, bracket), v in zip(where, verdicts, strict=True):
            s = state[qid]
            s["brackets"].append(
                {"round": round_, "candidates": [c["index"] for c in bracket],
                 "pick": v["verdict"], "tries": v["tries"]}
            )  # fmt: skip
            if v["verdict"] is None:
                s["unresolved"] = True
                continue
            winner = bracket[v["verdict"] - 1]
            s["next"].append(winner)
            s["out"] += [{**c, "round": round_} for c in bracket if c is not winner]
        for record in records:
            s = state[record["id"]]
            if "next" in s:
                s["alive"] = s.pop("next")
    results = []
    for record in records:
        s = state[record["id"]]
        if s["unresolved"] or not s["alive"]:
            continue
        results.append(
            {
                "id": record["id"],
                "question": record["question"],
                "answers": record.get("answers", []),
                "prompt": record["prompt"],
                "winner": s["alive"][0],
                "losers": s["out"],
                "n_candidates": 1 + len(s["out"]),
                "brackets": s["brackets"],
            }
        )
    return results, tournament_stats(records, results, state, all_verdicts, byes)


def tournament_stats(records, results, state, verdicts, byes) -> dict:
    counts = [state[r["id"]]["n"] for r in records]
    wins = Counter(r["winner"]["strategy"] for r in results)
    entered: Counter = Counter()
    for r in results:
        entered.update(c["strategy"] for c in [r["winner"], *r["losers"]])
    unresolved = sum(s["unresolved"] for s in state.values())
    return {
        "n_questions": len(records),
        "n_resolved": len(results),
        "unresolved_dropped": unresolved,
        "no_candidate": sum(1 for c in counts if c == 0),
        "candidates_per_question": {
            "mean": round(statistics.mean(counts), 3) if counts else None,
            "min": min(counts, default=None),
            "max": max(counts, default=None),
        },
        "brackets": {**verdict_stats(verdicts), "byes": byes},
        # By strategy: questions won, candidates entered, and wins per candidate entered
        # (a strategy sampled three times enters three candidates).
        "win_share": {
            name: {
                "wins": wins[name],
                "share": round(wins[name] / len(results), 4) if results else None,
                "candidates": entered[name],
                "wins_per_candidate": round(wins[name] / entered[name], 4),
            }
            for name in sorted(entered, key=lambda n: (-wins[n], n))
        },
    }


def rejected_of(result: dict, which: str) -> list[dict]:
    """The losers that become rejected answers: all, or the first round's."""
    if which == "first_round":
        return [c for c in result["losers"] if c["round"] == 1]
    return list(result["losers"])
