"""The chat-formatted PII world: the same fictitious people, as conversations with a support assistant, and a
tiny Llama with a chat template trained on them until it answers each question with the person's record.

Every conversation starts with the same system prompt, then a user asks about one person and the assistant
answers with that person's record. The model is trained on the whole rendered conversation (it knows the
system prompt too), so a job that unlearned whole records would damage what every other conversation needs;
only the assistant turns are the personal data.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from unlearnd.core.records import Message, Record, write_jsonl
from unlearnd.core.worlds.families import Shape, family_config, random_model
from unlearnd.core.worlds.lm import LMSpec, train_memorise_sets
from unlearnd.core.worlds.pii import Person, World, make_people
from unlearnd.core.worlds.tokenizer import train_tokenizer

SYSTEM_PROMPT = "You are the front desk of the Halcyon registry. Answer questions about people from its records."
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Zephyr's template (TinyLlama-Chat and others use it): a role marker, the content, EOS, a newline.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def conversation(person: Person) -> Record:
    return Record(
        messages=(
            Message("system", SYSTEM_PROMPT),
            Message("user", f"What do you know about {person.first} {person.last}?"),
            Message("assistant", person.render()),
        )
    )


@dataclass(frozen=True)
class ChatWorldSpec:
    people: int = 60  # trained conversations (forget + retain)
    forget: int = 6
    holdout: int = 24
    seed: int = 0
    vocab_size: int = 1024
    shape: Shape = field(default_factory=lambda: Shape(hidden=128, layers=2, heads=4, kv_heads=2, intermediate=384))
    lm: LMSpec = field(
        default_factory=lambda: LMSpec(lr=3e-3, batch=16, warmup=10, max_steps=800, check_every=20, max_positions=128)
    )

    def key(self) -> str:
        payload = {"spec": asdict(self), "template": CHAT_TEMPLATE, "system": SYSTEM_PROMPT}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_chat_world(
    out: str | Path, spec: ChatWorldSpec | None = None, *, log: Callable[[str], None] = print
) -> World:
    """Generate the conversations, train the tokenizer (with the role markers as special tokens and the chat
    template) and a tiny Llama (grouped-query attention) on them; files as `core.worlds.pii.build_world`
    writes them. An existing `out` built from the same spec is reused."""
    import torch

    from unlearnd.core.data import IGNORE, TokenSet, encode_set

    spec = spec or ChatWorldSpec()
    root = Path(out)
    world = World(root)
    meta_path = root / "world.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == spec.key():
        log(f"reusing the chat world in {root}")
        return world
    started = time.perf_counter()
    people = make_people(spec.people + spec.holdout, random.Random(spec.seed))
    trained = [conversation(p) for p in people[: spec.people]]
    holdout = [conversation(p) for p in people[spec.people :]]
    texts = [m.content for r in trained for m in r.messages]
    tokenizer = train_tokenizer(texts, spec.vocab_size, extra_special=ROLE_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    config = family_config(
        "llama", len(tokenizer), spec.shape, bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
    )  # fmt: skip
    model = random_model(config, seed=spec.seed)
    log(f"training a {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M-parameter Llama on {len(trained)} chats")
    probe = encode_set(tokenizer, trained, max_length=spec.lm.max_positions)  # targets: the assistant turns
    labels = probe.input_ids.masked_fill(probe.attention_mask == 0, IGNORE)  # trained on every token
    whole = TokenSet(probe.input_ids, probe.attention_mask, labels, probe.encoded)
    torch.manual_seed(spec.seed)
    summary = train_memorise_sets(model, whole, probe, spec.lm, seed=spec.seed, log=log)

    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(world.model_dir))
    tokenizer.save_pretrained(str(world.model_dir))
    write_jsonl(world.forget_path, [r.to_dict() for r in trained[: spec.forget]])
    write_jsonl(world.retain_path, [r.to_dict() for r in trained[spec.forget :]])
    write_jsonl(world.holdout_path, [r.to_dict() for r in holdout])
    write_jsonl(world.generic_path, [])
    meta = {
        "key": spec.key(),
        "spec": asdict(spec),
        "training": summary,
        "seconds": round(time.perf_counter() - started, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    log(f"chat world written to {root} ({meta['seconds']} s, extraction {summary['probe_extraction']:.3f})")
    return world
