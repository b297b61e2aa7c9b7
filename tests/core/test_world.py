"""The synthetic PII world: deterministic people, a tokenizer that round-trips with BOS/EOS, a model that
memorises its trained people and has never seen the holdout people."""

import json
import random

from transformers import AutoModelForCausalLM, AutoTokenizer

from unlearnd.core.worlds.pii import make_people
from unlearnd.core.worlds.tokenizer import train_tokenizer


def test_people_are_deterministic_for_a_seed_and_distinct():
    a = make_people(80, random.Random(7))
    b = make_people(80, random.Random(7))
    c = make_people(80, random.Random(8))
    assert a == b and a != c
    assert len({(p.first, p.last) for p in a}) == 80
    text = a[0].render()
    for field in (a[0].first, a[0].last, a[0].city, a[0].email, a[0].phone, a[0].employer, str(a[0].year)):
        assert field in text


def test_tokenizer_adds_bos_eos_and_survives_save_load(tmp_path):
    texts = [p.render() for p in make_people(30, random.Random(0))]
    tok = train_tokenizer(texts, vocab_size=400)
    ids = tok(texts[0])["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    tok.save_pretrained(str(tmp_path))
    back = AutoTokenizer.from_pretrained(str(tmp_path))
    assert back(texts[0])["input_ids"] == ids
    assert back.decode(ids, skip_special_tokens=True) == texts[0]
    assert back.pad_token_id is not None and back.pad_token_id != back.eos_token_id


def test_world_files_split_people_and_model_loads(tiny_world):
    info = tiny_world.info
    spec = info["spec"]
    forget, retain, holdout = tiny_world.forget, tiny_world.retain, tiny_world.holdout
    assert len(forget) == spec["forget"] and len(forget) + len(retain) == spec["people"]
    assert len(holdout) == spec["holdout"]
    trained = {r.text for r in forget + retain}
    assert not trained & {r.text for r in holdout}  # holdout people are never trained on
    assert info["training"]["probe_extraction"] >= 0.9
    model = AutoModelForCausalLM.from_pretrained(str(tiny_world.model_dir))
    assert model.config.model_type == "gpt_neo"
    for line in tiny_world.forget_path.read_text().splitlines():
        assert set(json.loads(line)) == {"text"}


def test_existing_world_with_the_same_spec_is_reused(tiny_world):
    from unlearnd.core.worlds.pii import build_world, tiny_spec

    weights = next(tiny_world.model_dir.glob("*.safetensors"))
    mtime = weights.stat().st_mtime_ns
    logs = []
    build_world(tiny_world.root, tiny_spec(), log=logs.append)
    assert weights.stat().st_mtime_ns == mtime and logs and "reusing" in logs[0]
