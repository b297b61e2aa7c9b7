"""Chat records: conversations rendered with the model's own template, only the assistant turns unlearned and
measured; pairs on a chat model go through the template too; a model without a template refuses them."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import fast_config
from unlearnd.core.chat import directory_has_chat_template
from unlearnd.core.data import IGNORE, encode_set
from unlearnd.core.errors import InvalidInput
from unlearnd.core.records import Message, Record
from unlearnd.core.worlds.chat import CHAT_TEMPLATE, ROLE_TOKENS, SYSTEM_PROMPT

CHAT = Record(
    messages=(
        Message("system", SYSTEM_PROMPT),
        Message("user", "Who is Jane Roe?"),
        Message("assistant", "Jane Roe was born in Fernvale."),
        Message("user", "And her phone?"),
        Message("assistant", "Her phone is +44 591 2231."),
    )
)


@pytest.fixture(scope="module")
def chat_tokenizer():
    from unlearnd.core.worlds.tokenizer import train_tokenizer

    texts = [SYSTEM_PROMPT, "Who is Jane Roe? And her phone?", "Jane Roe was born in Fernvale.", "+44 591 2231"]
    tok = train_tokenizer(texts * 4, 400, extra_special=ROLE_TOKENS)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _targets(tok, ts, row: int = 0) -> str:
    ids = ts.labels[row][ts.labels[row] != IGNORE].tolist()
    return tok.decode(ids)


def test_chat_records_round_trip_and_are_validated():
    assert Record.from_dict(CHAT.to_dict()) == CHAT
    assert CHAT.chars == sum(len(m.content) for m in CHAT.messages)
    bad = [
        {"messages": []},
        {"messages": [{"role": "user", "content": "hi"}]},  # nothing to unlearn
        {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "assistant", "content": 3}]},
        {"messages": [{"role": "assistant", "content": "y"}], "text": "both"},
    ]
    for d in bad:
        with pytest.raises(InvalidInput):
            Record.from_dict(d)


def test_only_assistant_turns_are_targets_and_the_last_reply_is_what_extraction_asks_for(chat_tokenizer):
    tok = chat_tokenizer
    ts = encode_set(tok, [CHAT])
    e = ts.encoded[0]
    assert tok.decode(e.ids).startswith("<s><|system|>\n" + SYSTEM_PROMPT)
    # both replies and each one's end of turn, nothing of the system prompt or the user's turns
    assert _targets(tok, ts).replace(" ", "") == (
        "Jane Roe was born in Fernvale.</s>Her phone is +44 591 2231.</s>".replace(" ", "")
    )
    assert tok.decode(e.ids[: e.prefix_len]).endswith("And her phone?</s>\n<|assistant|>\n")
    assert e.prompted  # the conversation so far is the one extraction prompt


def test_a_pair_on_a_chat_model_is_rendered_as_a_user_turn_and_a_reply(chat_tokenizer):
    tok = chat_tokenizer
    ts = encode_set(tok, [Record(prompt="Who is Jane Roe?", completion="Jane Roe was born in Fernvale.")])
    assert tok.decode(ts.encoded[0].ids).startswith("<s><|user|>\nWho is Jane Roe?</s>\n<|assistant|>\n")
    assert _targets(tok, ts).replace(" ", "") == "Jane Roe was born in Fernvale.</s>".replace(" ", "")
    text = encode_set(tok, [Record(text="Jane Roe was born in Fernvale.")])  # texts never use the template
    assert "<|user|>" not in tok.decode(text.encoded[0].ids)


def test_a_model_without_a_chat_template_refuses_conversations_clearly(chat_tokenizer, tmp_path):
    import copy

    plain = copy.deepcopy(chat_tokenizer)
    plain.chat_template = None
    with pytest.raises(InvalidInput, match="chat template"):
        encode_set(plain, [CHAT])
    encode_set(plain, [Record(prompt="Who is Jane Roe?", completion=" Jane Roe.")])  # pairs still work there
    plain.save_pretrained(str(tmp_path / "plain"))
    chat_tokenizer.save_pretrained(str(tmp_path / "chat"))
    assert not directory_has_chat_template(tmp_path / "plain")
    assert directory_has_chat_template(tmp_path / "chat")


def test_templates_that_refuse_a_role_or_trim_content_are_handled(chat_tokenizer):
    import copy

    gemma_like = copy.deepcopy(chat_tokenizer)
    gemma_like.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<|{{ m['role'] }}|>\n{{ m['content'] | trim }}{{ eos_token }}\n{% endfor %}"
    )
    with pytest.raises(InvalidInput, match="System role not supported"):
        encode_set(gemma_like, [CHAT])
    padded = Record(messages=(Message("user", " Who is Jane Roe? "), Message("assistant", "  Jane Roe.  ")))
    ts = encode_set(gemma_like, [padded])
    assert _targets(gemma_like, ts).replace(" ", "") == "JaneRoe.</s>"


@pytest.mark.slow
def test_a_chat_job_forgets_the_assistant_turns_and_keeps_the_system_prompt(tiny_chat_world, tmp_path):
    """The chat world's model knows the shared system prompt by heart and each person's reply; unlearning the
    forget conversations removes the replies and leaves the system prompt as it was."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from unlearnd.core.metrics import greedy_continue
    from unlearnd.core.modeling import load_model
    from unlearnd.core.pipeline import run_forget

    loaded = load_model(tiny_chat_world.model_dir, device="cpu")
    tok = loaded.tokenizer
    forget = tiny_chat_world.forget
    ts = encode_set(tok, forget)
    system_ids = tok(f"<s><|system|>\n{SYSTEM_PROMPT}</s>", add_special_tokens=False)["input_ids"]
    assert ts.input_ids[0, : len(system_ids)].tolist() == system_ids

    def measure(model) -> tuple[float, float, bool]:
        """Mean NLL of the system prompt's tokens and of the assistant turns' tokens; whether the system prompt
        is still recited from its first two tokens."""
        with torch.inference_mode():
            logits = model(input_ids=ts.input_ids, attention_mask=ts.attention_mask).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ts.input_ids[:, 1:], reduction="none")
        system = nll[:, : len(system_ids) - 1].mean()
        assistant = nll[ts.labels[:, 1:] != IGNORE].mean()
        recited = greedy_continue(model, [system_ids[:2]], [len(system_ids) - 2], torch.device("cpu"))[0]
        return float(system), float(assistant), recited == system_ids[2:]

    sys_before, reply_before, recited_before = measure(loaded.model)
    result = run_forget(
        loaded,
        forget,
        tiny_chat_world.retain,
        tiny_chat_world.holdout,
        fast_config(),  # the default method, ctd
        out_dir=tmp_path / "adapter",
    )
    before, after = result.report["before"]["forget"], result.report["after"]["forget"]
    assert before["extraction"] >= 0.8 and after["extraction"] == 0.0  # the replies were recited, now not
    assert result.outcome == "forgotten", result.report["verdict"]["after"]["failed"]
    assert result.report["verdict"]["utility"]["kept"]  # other people's replies are kept

    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_chat_world.model_dir)).eval()
    unlearned = PeftModel.from_pretrained(fresh, str(result.adapter_dir)).eval()
    sys_after, reply_after, recited_after = measure(unlearned)
    assert reply_after > reply_before + 2.0  # the assistant turns are what was forgotten
    assert recited_before and recited_after  # the system prompt is not
    assert sys_after < 0.05


@pytest.mark.slow
def test_the_readme_chat_example_runs_from_the_command_line(tiny_chat_world, tmp_path):
    """`unlearnd demo-model --chat` (here: the cached world it builds) and `unlearnd unlearn` on its
    conversations, as README "From the command line" shows."""
    import json

    from typer.testing import CliRunner

    from unlearnd.cli.main import app

    runner = CliRunner()
    built = runner.invoke(app, ["demo-model", "--chat", "--out", str(tiny_chat_world.root)])
    assert built.exit_code == 0 and "reusing the chat world" in built.output  # the CLI's defaults = this world
    w, out = tiny_chat_world, tmp_path / "adapter"
    args = ["unlearn", "--model", w.model_dir, "--forget", w.forget_path, "--retain", w.retain_path]
    args += ["--holdout", w.holdout_path, "--max-steps", 40, "--out", out]
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["before"]["forget"]["extraction"] >= 0.8 and report["after"]["forget"]["extraction"] == 0.0
