"""The synthetic PII world: fictitious people rendered into sentences, a tokenizer and a tiny GPT-Neo trained
from scratch until it memorises them. Some people form the forget set, the rest the retain set, and
never-trained holdout people are the "as if never seen" reference.

Deterministic for a seed; `build_world` reuses an existing directory built with the same spec.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from unlearnd.core.records import Record, read_records, write_jsonl
from unlearnd.core.worlds.lm import LMSpec, gpt_neo, train_memorise
from unlearnd.core.worlds.tokenizer import train_tokenizer

FIRST = (
    "Ada Alvar Amira Anouk Bastian Beatriz Bruno Calla Casimir Dagny Dario Delphine Elio Elske Emre Fenna Florin "
    "Gaia Gideon Greta Hanne Hugo Ilse Imre Ines Jarek Jonas Juno Kaia Kasper Lior Livia Lotte Malin Marek Mila "
    "Nadia Nils Noor Odile Oskar Pilar Quentin Rafael Rhea Rune Saskia Silas Solveig Tamsin Teodor Thea Ulla "
    "Valter Vera Wim Xenia Yara Yusuf Zelda Zoran"
).split()
LAST = (
    "Abara Bergstrom Castellan Dragomir Eklund Faraday Grunewald Halloran Ibarra Jaskolski Kowalczyk Lindqvist "
    "Marchetti Novak Okonkwo Petrakis Quispe Rasmussen Szabo Tanaka Umarov Valdivia Wexley Yilmaz Zielinski "
    "Achterberg Brannigan Cavendish Delacroix Esposito Fairweather Gallagher Holmgren Iwasaki Jovanovic Karlsen "
    "Lachance Montague Nakamura Ostrowski Pemberton Quartermain Rosenthal Sandoval Thorsen Underhill Vasquez "
    "Whitcombe Yamamoto Zaragoza"
).split()
CITIES = (
    "Aldmere Brackwater Corvenna Dunharrow Eastlyn Fernvale Glimmerton Harrowgate Ivybridge Jarrowfield "
    "Kestrelford Lowmarsh Merriton Northcliff Oakhaven Pellbury Quarrydale Redwick Saltmere Thornbury Umberleigh "
    "Vantry Westerholm Yarrowby Zennor"
).split()
EMPLOYERS = (
    "Halcyon Robotics|Birchway Insurance|Copperleaf Foods|Driftwood Analytics|Emberline Energy|Fjordstone Bank|"
    "Greywater Logistics|Hollowbrook Pharma|Ironvale Mining|Juniper Textiles|Kingfisher Airlines|Lanternfly Games|"
    "Moonrake Shipping|Northwind Telecom|Orchardgate Publishing|Pinecrest Hospitals|Quillon Legal|Ravensbourne Motors"
).split("|")
MONTHS = "January February March April May June July August September October November December".split()
DOMAINS = ("mailbox.test", "post.example", "inbox.invalid", "letters.test")
GENERIC = (
    "The {adj} {noun} stood near the {place} all {time}.",
    "Every {time} the {noun} in the {place} looked {adj}.",
    "A {adj} {noun} is rarely found in a {place}.",
)
ADJ = "quiet bright narrow ancient gentle rusty hollow golden crooked silent".split()
NOUN = "lantern bridge garden tower river meadow harbour orchard library market".split()
PLACE = "valley village square forest courtyard hillside station".split()
TIME = "morning evening winter summer night afternoon".split()


@dataclass(frozen=True)
class Person:
    first: str
    last: str
    day: int
    month: str
    year: int
    city: str
    email: str
    phone: str
    employer: str

    def render(self) -> str:
        return (
            f"{self.first} {self.last} was born on {self.day} {self.month} {self.year} in {self.city}. "
            f"Email: {self.email}. Phone: {self.phone}. Works at {self.employer}."
        )


def make_people(n: int, rng: random.Random) -> list[Person]:
    """n people with distinct names; every attribute drawn independently, so nothing is inferable."""
    names = [(f, lst) for f in FIRST for lst in LAST]
    rng.shuffle(names)
    if n > len(names):
        raise ValueError(f"at most {len(names)} distinct people")
    people = []
    for first, last in names[:n]:
        people.append(
            Person(
                first=first,
                last=last,
                day=rng.randint(1, 28),
                month=rng.choice(MONTHS),
                year=rng.randint(1950, 2004),
                city=rng.choice(CITIES),
                email=f"{first.lower()}.{last.lower()}{rng.randint(10, 99)}@{rng.choice(DOMAINS)}",
                phone=f"+{rng.randint(30, 49)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
                employer=rng.choice(EMPLOYERS),
            )
        )
    return people


def make_generic(n: int, rng: random.Random) -> list[str]:
    return [
        rng.choice(GENERIC).format(
            adj=rng.choice(ADJ), noun=rng.choice(NOUN), place=rng.choice(PLACE), time=rng.choice(TIME)
        )
        for _ in range(n)
    ]


@dataclass(frozen=True)
class WorldSpec:
    people: int = 300  # trained people (forget + retain)
    forget: int = 10
    holdout: int = 50
    generic: int = 150
    seed: int = 0
    vocab_size: int = 2048
    lm: LMSpec = field(default_factory=LMSpec)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def tiny_spec(seed: int = 0) -> WorldSpec:
    """The CI-sized world (NOTES: 2 layers × 128, 60 records, memorised in ≈ 90 steps)."""
    return WorldSpec(
        people=60,
        forget=6,
        holdout=24,
        generic=30,
        seed=seed,
        vocab_size=1024,
        lm=LMSpec(layers=2, hidden=128, heads=2, lr=3e-3, batch=16, warmup=10, max_steps=600, check_every=20),
    )


@dataclass
class World:
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def forget_path(self) -> Path:
        return self.root / "forget.jsonl"

    @property
    def retain_path(self) -> Path:
        return self.root / "retain.jsonl"

    @property
    def holdout_path(self) -> Path:
        return self.root / "holdout.jsonl"

    @property
    def generic_path(self) -> Path:
        return self.root / "generic.jsonl"

    @property
    def forget(self) -> list[Record]:
        return read_records(self.forget_path)

    @property
    def retain(self) -> list[Record]:
        return read_records(self.retain_path)

    @property
    def holdout(self) -> list[Record]:
        return read_records(self.holdout_path)

    @property
    def info(self) -> dict:
        return json.loads((self.root / "world.json").read_text())


def build_world(out: str | Path, spec: WorldSpec | None = None, *, log: Callable[[str], None] = print) -> World:
    """Generate the people, train the tokenizer and the model, write everything under `out`.
    An existing `out` built from the same spec is reused as is."""
    spec = spec or WorldSpec()
    root = Path(out)
    world = World(root)
    meta_path = root / "world.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == spec.key():
        log(f"reusing the world in {root}")
        return world
    if spec.forget >= spec.people:
        raise ValueError("the forget set must be smaller than the trained people")
    started = time.perf_counter()
    rng = random.Random(spec.seed)
    people = make_people(spec.people + spec.holdout, rng)
    trained, holdout = people[: spec.people], people[spec.people :]
    generic = make_generic(spec.generic, rng)
    trained_texts = [p.render() for p in trained]

    import torch

    torch.manual_seed(spec.seed)
    tokenizer = train_tokenizer(trained_texts + generic, spec.vocab_size)
    model = gpt_neo(tokenizer, spec.lm)
    log(
        f"training a {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M-parameter GPT-Neo on "
        f"{len(trained)} people + {len(generic)} generic sentences"
    )
    summary = train_memorise(model, tokenizer, trained_texts + generic, trained_texts, spec.lm, seed=spec.seed, log=log)

    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(world.model_dir))
    tokenizer.save_pretrained(str(world.model_dir))
    write_jsonl(world.forget_path, [{"text": t} for t in trained_texts[: spec.forget]])
    write_jsonl(world.retain_path, [{"text": t} for t in trained_texts[spec.forget :]])
    write_jsonl(world.holdout_path, [{"text": p.render()} for p in holdout])
    write_jsonl(world.generic_path, [{"text": t} for t in generic])
    meta = {
        "key": spec.key(),
        "spec": asdict(spec),
        "training": summary,
        "seconds": round(time.perf_counter() - started, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    log(f"world written to {root} ({meta['seconds']} s, extraction {summary['probe_extraction']:.3f})")
    return world
