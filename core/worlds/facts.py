"""The synthetic facts world for RESTOR-style evaluation (Rezaei et al. 2024, arXiv 2411.00204).

Fictitious entities with true attributes are stated in several templates and as question/answer lines; a
clean model learns them. Corruption documents state *wrong* attributes about a subset of entities, mixed with
unrelated context at three levels; fine-tuning the clean model on them gives the corrupted model. Unlearning
the corruption documents should restore the clean answers, not just remove the wrong ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from core.worlds.pii import CITIES, EMPLOYERS, FIRST, LAST, make_generic

PROFESSIONS = "architect baker chemist dentist engineer farmer geologist historian journalist lawyer".split()
ATTRIBUTES = {
    "birthplace": (
        CITIES,
        ("{name} was born in {value}.", "The birthplace of {name} is {value}.", "{name} grew up in {value}."),
        "Question: Where was {name} born? Answer:",
    ),
    "employer": (
        EMPLOYERS,
        ("{name} works at {value}.", "The employer of {name} is {value}.", "{name} is employed by {value}."),
        "Question: Where does {name} work? Answer:",
    ),
    "profession": (
        PROFESSIONS,
        ("{name} is a {value}.", "By profession, {name} is a {value}.", "{name} works as a {value}."),
        "Question: What is the profession of {name}? Answer:",
    ),
}
CONTEXT_LEVELS = {"none": 0, "some": 1, "much": 3}  # unrelated sentences mixed in per corrupted statement


@dataclass(frozen=True)
class Fact:
    entity: str
    attribute: str
    value: str

    def statements(self) -> list[str]:
        return [t.format(name=self.entity, value=self.value) for t in ATTRIBUTES[self.attribute][1]]

    def question(self) -> str:
        return ATTRIBUTES[self.attribute][2].format(name=self.entity)

    def qa_line(self) -> str:
        return f"{self.question()} {self.value}."


@dataclass
class FactsWorld:
    entities: list[str]
    true: dict[tuple[str, str], Fact]
    corrupted_entities: list[str]
    wrong: dict[tuple[str, str], Fact]  # the injected (wrong) facts, for corrupted entities
    holdout_wrong: dict[tuple[str, str], Fact]  # wrong facts never trained: the "never seen" reference

    def clean_texts(self) -> list[str]:
        return [s for f in self.true.values() for s in (*f.statements(), f.qa_line())]

    def corruption_docs(self, level: str, rng: random.Random) -> list[str]:
        return _docs(self.wrong.values(), CONTEXT_LEVELS[level], rng)

    def holdout_docs(self, level: str, rng: random.Random) -> list[str]:
        return _docs(self.holdout_wrong.values(), CONTEXT_LEVELS[level], rng)


def _docs(facts, n_context: int, rng: random.Random) -> list[str]:
    """One document per wrong fact: its statements and QA line, each followed by n unrelated sentences."""
    docs = []
    for f in facts:
        parts = []
        for s in (*f.statements(), f.qa_line()):
            parts.append(s)
            parts.extend(make_generic(n_context, rng))
        docs.append(" ".join(parts))
    return docs


def make_facts_world(n_entities: int, corrupted_share: float, seed: int) -> FactsWorld:
    rng = random.Random(seed)
    names = [f"{f} {lst}" for f in FIRST for lst in LAST]
    rng.shuffle(names)
    entities = names[:n_entities]
    true = {}
    for e in entities:
        for attr, (values, _, _) in ATTRIBUTES.items():
            true[(e, attr)] = Fact(e, attr, rng.choice(values))
    n_bad = max(1, int(n_entities * corrupted_share))
    corrupted, untouched = entities[:n_bad], entities[n_bad:]

    def wrong_for(es):
        out = {}
        for e in es:
            for attr, (values, _, _) in ATTRIBUTES.items():
                out[(e, attr)] = Fact(e, attr, rng.choice([v for v in values if v != true[(e, attr)].value]))
        return out

    return FactsWorld(entities, true, corrupted, wrong_for(corrupted), wrong_for(untouched[:n_bad]))
