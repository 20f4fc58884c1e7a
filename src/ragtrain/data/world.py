"""A seeded generator of a small fictional world for RAG training and evaluation.

Every name is assembled from invented syllables, so no model can answer from memory: the
questions are answerable only from the generated passages. The world holds people,
organisations and cities; each gets one short passage stating its attributes verbatim.
Distractor passages about near-namesakes (same first name, surname or name root, different
facts) make retrieval non-trivial. Unanswerable questions come in two kinds: an attribute
the corpus deliberately never states (a withheld birth or founding year), and an entity that
appears nowhere in the corpus.

Birth years (1930-1985) and founding years (1990-2023) never overlap and populations are
written with thousands separators, so no passage that mentions an entity whose year is
withheld states that year by accident.

ALCE-shaped questions (`alce`: split -> count) imitate ASQA, QAMPARI and ELI5, a third
of each per split, each with five documents (`source_docs`: its gold passages, then
near-namesakes of the entities involved, passages that mention them, any others,
shuffled). ASQA-like: sub-questions (`qa_pairs`) whose facts span two passages;
QAMPARI-like: a list question answered by every passage stating the fact, distractors
included, 2 to 4 of them (`answer_groups`); ELI5-like: a long-form question with three
`claims`, each stated by one passage. `reference` is a teacher answer citing, ALCE style,
the position of the passage that states each sentence: "... in Ostrivale [4]." They use a
random stream of their own, so a world without them is exactly what it was before.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from ragtrain.core.records import write_json, write_jsonl
from ragtrain.core.seeds import stable_seed

# single letters repeated so that clusters and diphthongs stay occasional (pronounceable)
ONSETS = tuple("bdfgklmnprstvz") * 3 + ("br", "dr", "kr", "st", "th", "sh", "tr", "gr")
VOWELS = tuple("aeiou") * 4 + ("ai", "ei", "ou")
# fmt: off
CODAS = ("n", "r", "l", "s", "th", "nd", "rn", "sk", "nt", "v", "sh", "m", "lm")
ORG_SUFFIXES = ("Systems", "Works", "Holdings", "Guild", "Foundry", "Collective", "Company",
                "Trust", "Industries")
CITY_SUFFIXES = ("vale", "mark", "holm", "ford", "wick", "stead", "haven", "bury", "gate", "mere")
COUNTRY_SUFFIXES = ("ia", "land", "ar", "esh")
PROFESSIONS = ("cartographer", "glassblower", "archivist", "ferry pilot", "tax assessor",
               "beekeeper", "violin maker", "surveyor", "botanist", "typesetter", "locksmith",
               "hydrologist", "auctioneer", "stonemason", "translator", "actuary")
INDUSTRIES = ("shipbuilding", "textiles", "rail freight", "insurance", "mining", "publishing",
              "ceramics", "telegraphy", "brewing", "aviation", "salt trading", "clockmaking")
# fmt: on
PERSON_FLAVOUR = (
    "Friends say {first} is patient and exacting.",
    "In spare hours {first} keeps a small walled garden.",
    "{first} rarely misses a concert in the old quarter.",
    "Neighbours know {first} as a keen long-distance walker.",
)
ORG_FLAVOUR = (
    "It is known for long apprenticeships and careful records.",
    "The firm publishes a short report every spring.",
    "Its staff are spread across several regional offices.",
)
CITY_FLAVOUR = (
    "The old town is known for its covered markets.",
    "Ferries cross the river several times a day.",
    "Its stone bridges draw visitors in the summer months.",
)

# kind -> relation -> question; each relation is also the entity's attribute key
SINGLE = {
    "person": {
        "birthplace": "Where was {} born?",
        "birth_year": "In what year was {} born?",
        "profession": "What does {} do for a living?",
        "employer": "Which organisation does {} work for?",
    },
    "organisation": {
        "headquarters": "In which city is {} headquartered?",
        "founding_year": "In what year was {} founded?",
        "founder": "Who founded {}?",
        "industry": "Which industry does {} work in?",
    },
    "city": {
        "country": "In which country is {}?",
        "river": "On which river does {} lie?",
        "population": "What is the population of {}?",
    },
}
# relation -> ("kind asked about, bridge attribute, the bridge's attribute", question)
MULTI = {
    "employer_headquarters": (
        "person employer headquarters",
        "In which city is the headquarters of the organisation that {} works for?",
    ),
    "employer_founder": (
        "person employer founder",
        "Who founded the organisation that {} works for?",
    ),
    "birthplace_country": (
        "person birthplace country",
        "In which country is the city where {} was born?",
    ),
    "founder_birthplace": ("organisation founder birthplace", "Where was the founder of {} born?"),
    "headquarters_river": (
        "organisation headquarters river",
        "On which river lies the city where {} is headquartered?",
    ),
}
WITHHELD = {"person": "birth_year", "organisation": "founding_year"}
WITHHELD_RATE = 0.2  # share of people / organisations whose year the corpus never states
TYPES = ("single", "multihop", "unanswerable")
ALCE_TYPES = ("asqa", "qampari", "eli5")
ALCE_DOCS = 5  # documents per ALCE-shaped question, as ALCE gives its models
# kind of the answers -> relation -> list question (QAMPARI-like), on the relation's value
LIST = {
    "person": {
        "birthplace": "Who was born in {}?",
        "employer": "Who works for {}?",
        "profession": "Who works as {}?",
    },
    "organisation": {
        "headquarters": "Which organisations are headquartered in {}?",
        "founder": "Which organisations were founded by {}?",
        "industry": "Which organisations work in {}?",
    },
    "city": {"river": "Which cities lie on the river {}?", "country": "Which cities are in {}?"},
}


@dataclass(frozen=True)
class WorldConfig:
    """Seed, world size and question mix; question counts are per split, rates per split."""

    seed: int = 13
    people: int = 60
    organisations: int = 20
    places: int = 15
    distractors: int = 30
    questions: dict[str, int] = field(
        default_factory=lambda: {"train": 200, "dev": 50, "test": 100}
    )
    multihop_rate: float = 0.2
    unanswerable_rate: float = 0.15
    alce: dict[str, int] = field(default_factory=dict)  # split -> ALCE-shaped questions

    def __post_init__(self):
        for name in ("people", "organisations", "places"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.distractors < 0:
            raise ValueError(f"distractors must be >= 0, got {self.distractors}")
        rates = (self.multihop_rate, self.unanswerable_rate)
        if not all(0 <= r <= 1 for r in rates) or sum(rates) > 1:
            raise ValueError(f"rates must lie in [0, 1] and sum to at most 1, got {rates}")
        for key in ("questions", "alce"):
            for split, n in getattr(self, key).items():
                # datasets name splits in the config (datasets.<name>.split)
                if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
                    raise ValueError(f"{key}: bad split name {split!r}")
                if not isinstance(n, int) or n < 0:
                    raise ValueError(
                        f"{key}: split {split!r}: question count must be an int >= 0, got {n!r}"
                    )
        if both := sorted(set(self.questions) & set(self.alce)):
            raise ValueError(
                f"alce: split {both[0]!r} is also in questions; a split holds one kind of"
                " question, so give the ALCE-shaped ones a split of their own"
            )

    @classmethod
    def from_dict(cls, d: dict) -> WorldConfig:
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"unknown world config key {key!r}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class World:
    """The corpus and its question splits; distractor_ids are the near-namesake passages;
    entities maps each passage id to the attributes its passage states."""

    passages: list[dict]
    splits: dict[str, list[dict]]
    distractor_ids: list[str] = field(default_factory=list)
    entities: dict[str, dict] = field(default_factory=dict)


class _Names:
    """Invents pronounceable names; no name equals, contains or is contained in another."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.taken: list[str] = []

    def word(self, syllables: int, coda: float = 0.7) -> str:
        """Capitalised (onset) vowel (onset vowel)... (coda), e.g. "Marel", "Ostri"."""
        rng = self.rng
        first = self.syllable() if rng.random() < 0.85 else rng.choice(VOWELS)
        rest = [self.syllable() for _ in range(syllables - 1)]
        end = rng.choice(CODAS) if rng.random() < coda else ""
        return (first + "".join(rest) + end).capitalize()

    def syllable(self) -> str:
        return self.rng.choice(ONSETS) + self.rng.choice(VOWELS)

    def fresh(self, make: Callable[[], str], avoid: str = "") -> str:
        for _ in range(1000):
            name = make()
            if (
                len(name) >= 4
                and name not in avoid
                and not any(name in t or t in name for t in self.taken)
            ):
                self.taken.append(name)
                return name
        raise RuntimeError("could not invent a new unique name")

    def variant(self, ns: dict) -> Callable[[], str]:
        """A maker of names sharing a part (first name, surname, root) with entity `ns`."""
        rng, kind = self.rng, ns["kind"]
        if kind == "person":
            first, last = ns["name"].split()
            return lambda: (
                f"{first} {self.word(2)}" if rng.random() < 0.5 else f"{self.word(2)} {last}"
            )
        if kind == "organisation":
            root = ns["name"].rsplit(" ", 1)[0]
        else:
            root = next(ns["name"].removesuffix(s) for s in CITY_SUFFIXES if ns["name"].endswith(s))

        def make() -> str:
            # an optional extra syllable keeps the space open once all suffixes are taken
            stem = root + rng.choice(("", self.syllable()))
            if kind == "organisation":
                return f"{stem} {rng.choice(ORG_SUFFIXES)}"
            return stem + rng.choice(CITY_SUFFIXES)

        return make


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _city(name: str, rng: random.Random, countries: list, rivers: list) -> dict:
    population = rng.randint(12, 900) * 1000 + rng.randint(1, 9) * 100
    return {
        "kind": "city",
        "name": name,
        "country": rng.choice(countries),
        "river": rng.choice(rivers),
        "population": f"{population:,}",
        "withheld": None,
    }


def _person(name: str, rng: random.Random, cities: list, orgs: list) -> dict:
    return {
        "kind": "person",
        "name": name,
        "birthplace": rng.choice(cities)["name"],
        "birth_year": str(rng.randint(1930, 1985)),
        "profession": rng.choice(PROFESSIONS),
        "employer": rng.choice(orgs)["name"] if orgs else None,
        "withheld": None,
    }


def _org(name: str, rng: random.Random, cities: list, people: list) -> dict:
    founder = rng.choice(people)
    earliest = max(1990, int(founder["birth_year"]) + 22)
    return {
        "kind": "organisation",
        "name": name,
        "headquarters": rng.choice(cities)["name"],
        "founding_year": str(rng.randint(earliest, 2023)),
        "founder": founder["name"],
        "industry": rng.choice(INDUSTRIES),
        "withheld": None,
    }


def _render(e: dict, rng: random.Random) -> str:
    """One to three sentences stating the entity's attributes verbatim (bar a withheld one)."""
    n, hidden = e["name"], e["withheld"]
    if e["kind"] == "person":
        born = f"in {e['birthplace']}" + ("" if hidden else f" in {e['birth_year']}")
        job, org = _a(e["profession"]), e["employer"]
        facts = rng.choice(
            [
                f"{n} was born {born}. {n} works as {job} for {org}.",
                f"Born {born}, {n} is {job}. {n} is employed by {org}.",
                f"{n} is {job} at {org}. {n} was born {born}.",
            ]
        )
        flavour = rng.choice(PERSON_FLAVOUR).format(first=n.split()[0])
    elif e["kind"] == "organisation":
        year = "" if hidden else f" in {e['founding_year']}"
        ind, founder, hq = e["industry"], e["founder"], e["headquarters"]
        facts = rng.choice(
            [
                f"{n} is {_a(ind)} company founded{year} by {founder}. "
                f"Its headquarters are in {hq}.",
                f"Founded by {founder}{year}, {n} works in {ind} and is headquartered in {hq}.",
            ]
        )
        flavour = rng.choice(ORG_FLAVOUR)
    else:
        country, river, pop = e["country"], e["river"], e["population"]
        facts = rng.choice(
            [
                f"{n} is a city in {country} on the river {river}, with a population of {pop}.",
                f"Lying on the river {river}, {n} is a city in {country}. "
                f"About {pop} people live there.",
            ]
        )
        flavour = rng.choice(CITY_FLAVOUR)
    return f"{facts} {flavour}"


def _example(question: str, answers: list[str], gold: list[str], meta: dict) -> dict:
    return {"question": question, "answers": answers, "docs": [], "gold_doc_ids": gold,
            "meta": meta}  # fmt: skip


def generate_world(cfg: WorldConfig) -> World:
    """Build the corpus and the question splits; the same config always gives the same world."""
    rng = random.Random(cfg.seed)
    names = _Names(rng)
    countries = [
        names.fresh(lambda: names.word(2, coda=1) + rng.choice(COUNTRY_SUFFIXES))
        for _ in range(max(2, cfg.places // 4))
    ]
    rivers = [
        names.fresh(lambda: names.word(rng.choice((1, 2)), coda=1))
        for _ in range(max(2, cfg.places // 2))
    ]
    cities = [
        _city(
            names.fresh(lambda: names.word(2, coda=0.3) + rng.choice(CITY_SUFFIXES)),
            rng,
            countries,
            rivers,
        )
        for _ in range(cfg.places)
    ]
    people = [
        _person(names.fresh(lambda: f"{names.word(2)} {names.word(2)}"), rng, cities, [])
        for _ in range(cfg.people)
    ]
    orgs = [
        _org(
            names.fresh(lambda: f"{names.word(2)} {rng.choice(ORG_SUFFIXES)}"), rng, cities, people
        )
        for _ in range(cfg.organisations)
    ]
    for p in people:
        p["employer"] = rng.choice(orgs)["name"]
    for group in (people, orgs):
        for e in rng.sample(group, round(WITHHELD_RATE * len(group))):
            e["withheld"] = WITHHELD[e["kind"]]

    real = [*cities, *people, *orgs]
    makers = {
        "city": lambda n: _city(n, rng, countries, rivers),
        "person": lambda n: _person(n, rng, cities, orgs),
        "organisation": lambda n: _org(n, rng, cities, people),
    }
    key_fact = {"city": "population", "person": "birth_year", "organisation": "founding_year"}
    distractors, namesake_of = [], {}
    for _ in range(cfg.distractors):
        ns = rng.choice(real)
        name, fact = names.fresh(names.variant(ns)), key_fact[ns["kind"]]
        d = makers[ns["kind"]](name)
        while d[fact] == ns[fact]:  # a namesake must not share the headline fact
            d = makers[ns["kind"]](name)
        distractors.append(d)
        namesake_of[name] = ns["name"]

    # shuffled so that neither position nor id tells a distractor from a real entity
    docs = [(e, False) for e in real] + [(d, True) for d in distractors]
    rng.shuffle(docs)
    passages, pid, distractor_ids, entities = [], {}, [], {}
    for i, (e, is_distractor) in enumerate(docs):
        doc_id = f"doc-{i:05d}"
        passages.append({"id": doc_id, "title": e["name"], "text": _render(e, rng)})
        stated = {k: v for k, v in e.items() if k not in ("withheld", e["withheld"])}
        entities[doc_id] = stated
        if is_distractor:
            distractor_ids.append(doc_id)
        else:
            pid[e["name"]] = doc_id
    blob = "\n".join(f"{p['title']}\n{p['text']}" for p in passages)
    splits = _questions(cfg, rng, names, real, pid, blob)
    if cfg.alce:
        # after everything else, on a stream of its own: the rest of the world is unchanged
        namesakes: dict[str, list[str]] = {}
        for doc_id in distractor_ids:
            namesakes.setdefault(pid[namesake_of[entities[doc_id]["name"]]], []).append(doc_id)
        splits |= _alce_questions(cfg, passages, entities, pid, namesakes)
    return World(passages=passages, splits=splits, distractor_ids=distractor_ids, entities=entities)


def _questions(
    cfg: WorldConfig,
    rng: random.Random,
    names: _Names,
    real: list[dict],
    pid: dict[str, str],
    blob: str,
) -> dict[str, list[dict]]:
    by_name = {e["name"]: e for e in real}
    pools: dict[str, list[dict]] = {t: [] for t in TYPES}
    withheld = []
    for e in real:
        n, gold = e["name"], [pid[e["name"]]]
        for rel, template in SINGLE[e["kind"]].items():
            q, meta = template.format(n), {"relation": rel, "entity": n}
            if rel == e["withheld"]:
                meta = {"type": "unanswerable", **meta, "reason": "withheld", "withheld": e[rel]}
                withheld.append(_example(q, [], gold, meta))
            else:
                pools["single"].append(_example(q, [e[rel]], gold, {"type": "single", **meta}))
        for rel, (path, template) in MULTI.items():
            kind, hop, attr = path.split()
            if e["kind"] == kind:
                mid = by_name[e[hop]]
                meta = {"type": "multihop", "relation": rel, "entity": n, "bridge": mid["name"]}
                ex = _example(template.format(n), [mid[attr]], [*gold, pid[mid["name"]]], meta)
                pools["multihop"].append(ex)

    plan = {}
    for split, total in cfg.questions.items():
        multi = round(total * cfg.multihop_rate)
        unans = min(round(total * cfg.unanswerable_rate), total - multi)
        plan[split] = {"single": total - multi - unans, "multihop": multi, "unanswerable": unans}
    for t in ("single", "multihop"):
        need, have = sum(p[t] for p in plan.values()), len(pools[t])
        if need > have:
            raise ValueError(
                f"world too small: {need} distinct {t} questions requested across splits but "
                f"only {have} exist (people={cfg.people}, organisations={cfg.organisations}, "
                f"places={cfg.places}); enlarge the world or ask for fewer questions"
            )

    # about half the unanswerable questions withhold a fact, the rest ask after a stranger
    need = sum(p["unanswerable"] for p in plan.values())
    pools["unanswerable"] = rng.sample(withheld, min(len(withheld), need // 2))
    while len(pools["unanswerable"]) < need:
        ns = rng.choice(real)
        name = names.fresh(names.variant(ns), avoid=blob)
        rel, template = rng.choice(list(SINGLE[ns["kind"]].items()))
        meta = {"type": "unanswerable", "relation": rel, "entity": name}
        ex = _example(template.format(name), [], [], meta | {"reason": "unknown_entity"})
        pools["unanswerable"].append(ex)

    for pool in pools.values():
        rng.shuffle(pool)
    splits = {}
    for split, counts in plan.items():
        examples = [pools[t].pop() for t, k in counts.items() for _ in range(k)]
        rng.shuffle(examples)
        splits[split] = [{"id": f"{split}-{i:05d}", **ex} for i, ex in enumerate(examples)]
    return splits


def _alce_questions(
    cfg: WorldConfig,
    passages: list[dict],
    entities: dict[str, dict],
    pid: dict[str, str],
    namesakes: dict[str, list[str]],
) -> dict[str, list[dict]]:
    """The ALCE-shaped splits, a third of each shape per split, no question asked twice;
    `namesakes` maps a real entity's passage to its near-namesakes' passages."""
    rng = random.Random(stable_seed(cfg.seed, "alce"))
    pools: dict[str, list[dict]] = {"asqa": [], "qampari": _qampari(entities, pid), "eli5": []}
    for doc_id in pid.values():
        pools["asqa"] += _asqa(entities[doc_id], entities, pid)
        pools["eli5"].append(_eli5(entities[doc_id], entities, pid))
    plan = {}
    for split, total in cfg.alce.items():
        plan[split] = [ALCE_TYPES[k % len(ALCE_TYPES)] for k in range(total)]
        rng.shuffle(plan[split])
    for t in ALCE_TYPES:
        need, have = sum(shapes.count(t) for shapes in plan.values()), len(pools[t])
        if need > have or (need and len(passages) < ALCE_DOCS):
            raise ValueError(
                f"world too small: {need} distinct {t} (ALCE-shaped) questions requested across"
                f" splits but only {have} exist, with {len(passages)} passages for"
                f" {ALCE_DOCS} documents each (people={cfg.people}, organisations="
                f"{cfg.organisations}, places={cfg.places}); enlarge the world or ask for fewer"
            )

    for pool in pools.values():
        rng.shuffle(pool)
    by_id = {p["id"]: p for p in passages}
    mentions: dict[str, list[str]] = {}

    def mentioning(name: str) -> list[str]:
        if name not in mentions:
            mentions[name] = [p["id"] for p in passages if name in p["text"]]
        return mentions[name]

    splits = {}
    for split, shapes in plan.items():
        splits[split] = []
        for i, t in enumerate(shapes):
            draft = pools[t].pop()
            # fillers: near-namesakes of the entities involved, then passages naming them,
            # then any others; none states a gold fact (only an entity's passage does, and
            # a list question's gold is every passage that states its fact)
            chosen = list(draft["gold"])
            names = [entities[d]["name"] for d in draft["involved"]]
            tiers = (
                [d for e_id in draft["involved"] for d in namesakes.get(e_id, [])],
                [d for name in names for d in mentioning(name)],
                list(by_id),
            )
            for tier in tiers:
                left = [d for d in dict.fromkeys(tier) if d not in chosen]
                chosen += rng.sample(left, min(ALCE_DOCS - len(chosen), len(left)))
            rng.shuffle(chosen)
            splits[split].append({"id": f"{split}-{i:05d}", **_alce_record(draft, chosen, by_id)})
    return splits


def _alce_record(draft: dict, docs: list[str], by_id: dict[str, dict]) -> dict:
    """A draft with its documents in order, and a teacher answer citing their positions."""
    pos = {d: k + 1 for k, d in enumerate(docs)}
    fields = draft["fields"]
    if draft["type"] == "qampari":
        items = sorted(draft["statements"], key=lambda s: pos[s[1]])
        reference = ", ".join(f"{name} [{pos[d]}]" for name, d in items) + "."
        answers = [group[0] for group in fields["answer_groups"]]
    else:
        reference = " ".join(f"{text} [{pos[d]}]." for text, d in draft["statements"])
        if draft["type"] == "asqa":
            answers = [a for pair in fields["qa_pairs"] for a in pair["short_answers"]]
        else:
            answers = fields["claims"]
    return {
        "question": draft["question"],
        "answers": list(dict.fromkeys(answers)),
        "docs": [],
        "source_docs": [dict(by_id[d]) for d in docs],
        "gold_doc_ids": draft["gold"],
        **fields,
        "reference": reference,
        "meta": draft["meta"],
    }


def _draft(
    shape: str,
    question: str,
    statements: list[tuple[str, str]],
    meta: dict,
    involved: list[str] | None = None,
    **fields,
) -> dict:
    """An ALCE-shaped question before its documents: `statements` are the teacher answer's
    sentences (a list question's items) with the passage that states each."""
    gold = list(dict.fromkeys(d for _, d in statements))
    extra = {"answers_from": "claims"} if shape == "eli5" else {}
    return {
        "type": shape,
        "question": question,
        "statements": statements,
        "gold": gold,
        "involved": involved or gold,
        "fields": fields,
        "meta": {"type": shape, "task": shape, **meta, **extra},
    }


def _asqa(e: dict, entities: dict[str, dict], pid: dict[str, str]) -> list[dict]:
    """Questions with sub-questions (`qa_pairs`) whose answers lie in two passages."""
    n, own = e["name"], pid[e["name"]]
    single = SINGLE[e["kind"]]
    if e["kind"] == "person":
        org, city = entities[pid[e["employer"]]], entities[pid[e["birthplace"]]]
        o, c, hq = org["name"], city["name"], org["headquarters"]
        work = [
            {"question": single["profession"].format(n), "short_answers": [e["profession"]]},
            {"question": single["employer"].format(n), "short_answers": [o]},
            {"question": MULTI["employer_headquarters"][1].format(n), "short_answers": [hq]},
        ]
        country, river = city["country"], city["river"]
        on_river = f"On which river lies the city where {n} was born?"
        origin = [
            {"question": single["birthplace"].format(n), "short_answers": [c]},
            {"question": MULTI["birthplace_country"][1].format(n), "short_answers": [country]},
            {"question": on_river, "short_answers": [river]},
        ]
        return [
            _draft(
                "asqa",
                f"What is known about {n}'s work?",
                [
                    (f"{n} works as {_a(e['profession'])} for {o}", own),
                    (f"{o} is headquartered in {hq}", pid[o]),
                ],
                {"relation": "work", "entity": n, "bridge": o},
                qa_pairs=work,
            ),
            _draft(
                "asqa",
                f"Where does {n} come from?",
                [
                    (f"{n} was born in {c}", own),
                    (f"{c} is a city in {country} on the river {river}", pid[c]),
                ],
                {"relation": "origin", "entity": n, "bridge": c},
                qa_pairs=origin,
            ),
        ]
    if e["kind"] == "organisation":
        founder = entities[pid[e["founder"]]]
        f, born = founder["name"], founder["birthplace"]
        year = e.get("founding_year")  # absent where withheld
        pairs = [{"question": single["founder"].format(n), "short_answers": [f]}]
        if year:
            pairs.append({"question": single["founding_year"].format(n), "short_answers": [year]})
        pairs.append(
            {"question": MULTI["founder_birthplace"][1].format(n), "short_answers": [born]}
        )
        statements = [
            (f"{n} was founded by {f}" + (f" in {year}" if year else ""), own),
            (f"{f} was born in {born}", pid[f]),
        ]
        meta = {"relation": "founding", "entity": n, "bridge": f}
        question = f"What is known about the founding of {n}?"
        return [_draft("asqa", question, statements, meta, qa_pairs=pairs)]
    return []


def _eli5(e: dict, entities: dict[str, dict], pid: dict[str, str]) -> dict:
    """A long-form question with three claims, each stated by one passage (one of them by a
    second passage, bar a city no organisation has its headquarters in)."""
    n, own = e["name"], pid[e["name"]]
    if e["kind"] == "person":
        org = entities[pid[e["employer"]]]
        question, relation = f"Describe {n}'s background.", "background"
        claims = [
            (f"{n} was born in {e['birthplace']}", own),
            (f"{n} works as {_a(e['profession'])} for {org['name']}", own),
            (f"{org['name']} is headquartered in {org['headquarters']}", pid[org["name"]]),
        ]
    elif e["kind"] == "organisation":
        f = e["founder"]
        question, relation = f"What should I know about {n}?", "overview"
        claims = [
            (f"{n} works in {e['industry']}", own),
            (f"{n} was founded by {f}", own),
            (f"{f} was born in {entities[pid[f]]['birthplace']}", pid[f]),
        ]
    else:
        question, relation = f"Tell me about {n}.", "overview"
        claims = [
            (f"{n} is a city in {e['country']}", own),
            (f"{n} lies on the river {e['river']}", own),
        ]
        based = [d for d in pid.values() if entities[d].get("headquarters") == n]
        if based:
            claims.append((f"{entities[based[0]]['name']} is headquartered in {n}", based[0]))
        else:
            claims.append((f"About {e['population']} people live in {n}", own))
    meta = {"relation": relation, "entity": n}
    return _draft("eli5", question, claims, meta, claims=[f"{c}." for c, _ in claims])


def _qampari(entities: dict[str, dict], pid: dict[str, str]) -> list[dict]:
    """List questions answered by every passage (distractors too) that states one fact, where
    2 to 4 passages do, so that all of them fit among the documents."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for doc_id, e in entities.items():
        for rel in LIST[e["kind"]]:
            if rel in e:
                groups.setdefault((e["kind"], rel, e[rel]), []).append(doc_id)
    drafts = []
    for (kind, rel, value), docs in groups.items():
        if not 2 <= len(docs) <= ALCE_DOCS - 1:
            continue
        names = [entities[d]["name"] for d in docs]
        shown = _a(value) if rel == "profession" else value
        about = [pid[value]] if value in pid else []  # the value is itself an entity
        meta = {"relation": rel, "value": value, "kind": kind}
        if about:
            meta["entity"] = value
        drafts.append(
            _draft(
                "qampari",
                LIST[kind][rel].format(shown),
                list(zip(names, docs, strict=True)),
                meta,
                involved=[*docs, *about],
                answer_groups=[[name] for name in names],
            )
        )
    return drafts


def world_stats(world: World) -> dict:
    """Passage counts, and question counts per split and per type (an ALCE split counts
    asqa / qampari / eli5, and only a world with ALCE questions counts those types)."""
    splits, types = {}, list(TYPES)
    for split, examples in world.splits.items():
        alce = any(ex["meta"]["type"] in ALCE_TYPES for ex in examples)
        kinds = ALCE_TYPES if alce else TYPES
        if alce and types == list(TYPES):
            types += ALCE_TYPES
        counts = {t: sum(ex["meta"]["type"] == t for ex in examples) for t in kinds}
        splits[split] = {"total": len(examples), **counts}
    return {
        "passages": len(world.passages),
        "distractor_passages": len(world.distractor_ids),
        "questions": sum(s["total"] for s in splits.values()),
        "types": {t: sum(s.get(t, 0) for s in splits.values()) for t in types},
        "splits": splits,
    }


def write_world(
    world: World, corpus: Path, questions: Path, stats: Path, entities: Path | None = None
) -> None:
    """Write the passages, every split's questions in one file (`meta.split` says which),
    the counts and (for retrieval tasks built on the world) each passage's entity."""
    write_jsonl(corpus, world.passages)
    if entities is not None:
        write_jsonl(entities, ({"id": i, **e} for i, e in world.entities.items()))
    write_jsonl(
        questions,
        (
            {**ex, "meta": {**ex["meta"], "split": split}}
            for split, examples in world.splits.items()
            for ex in examples
        ),
    )
    write_json(stats, world_stats(world))
