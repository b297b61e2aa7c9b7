"""The synthetic facts world for RESTOR-style evaluation (Rezaei et al. 2024, arXiv 2411.00204).

Fictitious entities with true attributes are stated in several templates and as question/answer lines; a
clean model learns them. Corruption documents state *wrong* attributes about a subset of entities, mixed with
unrelated context at three levels; fine-tuning the clean model on them gives the corrupted model. Unlearning
the corruption documents should restore the clean answers, not just remove the wrong ones.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from unlearnd.core.worlds.pii import CITIES, EMPLOYERS, FIRST, LAST, make_generic

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

    def probe(self):
        """The question with this fact's value as the answer (`core.records.Probe`, what the audit reports)."""
        from unlearnd.core.records import Probe

        return Probe(self.question(), f" {self.value}.")


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
    """`n_entities` (≤ 62) with distinct first names; the corrupted ones' last names are never an untouched
    entity's, so a corruption cannot reach an untouched entity through a shared name token."""
    if not 2 <= n_entities <= len(FIRST):
        raise ValueError(f"n_entities must be in 2..{len(FIRST)}")
    rng = random.Random(seed)
    firsts, lasts = list(FIRST), list(LAST)
    rng.shuffle(firsts)
    rng.shuffle(lasts)
    n_bad = max(1, int(n_entities * corrupted_share))
    own, shared = lasts[:n_bad], lasts[n_bad:]
    entities = [f"{f} {own[i] if i < n_bad else rng.choice(shared)}" for i, f in enumerate(firsts[:n_entities])]
    true = {}
    for e in entities:
        for attr, (values, _, _) in ATTRIBUTES.items():
            true[(e, attr)] = Fact(e, attr, rng.choice(values))
    corrupted, untouched = entities[:n_bad], entities[n_bad:]

    def wrong_for(es):
        out = {}
        for e in es:
            for attr, (values, _, _) in ATTRIBUTES.items():
                out[(e, attr)] = Fact(e, attr, rng.choice([v for v in values if v != true[(e, attr)].value]))
        return out

    return FactsWorld(entities, true, corrupted, wrong_for(corrupted), wrong_for(untouched[:n_bad]))


def train_clean_model(
    world: FactsWorld,
    out: Path,
    lm,
    *,
    seed: int,
    vocab_size: int,
    target: float = 0.99,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the clean model on the true facts until its greedy answers to every question reach `target`
    accuracy (checked every `lm.check_every` steps, `lm.max_steps` at most), and save model + tokenizer to
    `out` with `done.json` (the training summary). The stopping score is the QA accuracy itself: a half-record
    extraction rule stops long before the answers are learnt (0.55 ± 0.32 in the README's earlier run)."""
    import torch

    from unlearnd.core.data import encode_set
    from unlearnd.core.metrics import probe_accuracy
    from unlearnd.core.records import Record
    from unlearnd.core.worlds.lm import gpt_neo, train_memorise_sets
    from unlearnd.core.worlds.tokenizer import train_tokenizer

    texts = world.clean_texts()
    # The corruption documents' words are in the vocabulary (they are fine-tuned on later).
    corruption = [d for lvl in CONTEXT_LEVELS for d in world.corruption_docs(lvl, random.Random(0))]
    torch.manual_seed(seed)
    tok = train_tokenizer(texts + corruption, vocab_size)
    model = gpt_neo(tok, lm)
    ts = encode_set(tok, [Record(text=t) for t in texts], max_length=lm.max_positions)
    probes = [f.probe() for f in world.true.values()]

    def accuracy(m) -> float:
        return probe_accuracy(m, tok, probes, torch.device("cpu"))["accuracy"]

    spec = replace(lm, target_extraction=target)
    run = train_memorise_sets(model, ts, None, spec, seed=seed, log=log, score=accuracy)
    summary = {"steps": run["steps"], "final_loss": run["final_loss"], "qa_accuracy": run["probe_extraction"]}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / "done.json").write_text(json.dumps(summary))
    return summary
