"""A small byte-level BPE tokenizer trained with `tokenizers`, wrapped for transformers, adding BOS/EOS."""

from __future__ import annotations


def train_tokenizer(texts: list[str], vocab_size: int = 2048, extra_special: tuple[str, ...] = ()):
    """`extra_special`: more special tokens, each one id that BPE never splits (a chat template's role
    markers such as `<|user|>`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", *extra_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # A bare ByteLevel BPE adds no BOS/EOS; the template makes every encoded record "<s> text </s>".
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=list(extra_special),
    )
