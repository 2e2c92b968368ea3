"""The demo target's tokenizer: one id per word of the synthetic world, shaped like Video-LLaVA's.

Layout (as Video-LLaVA's Llama tokenizer, where ``<image>``/``<video>`` are 32000/32001, after the words):
``<unk> <s> </s> <pad>``, the chat template's ``USER:`` / ``ASSISTANT:``, the world's first words
(``evcascade.data.questions.first_vocabulary()``, sorted), ``<image>`` and ``<video>``, then the words the detailed
captions added (``DETAIL_WORDS``), appended so that every earlier id stays what the bundled target was trained on
(a model trained on the first vocabulary grows its embeddings with ``resize_token_embeddings``). Text is split on
whitespace, so every question, answer and caption of the world tokenises without ``<unk>`` and decodes
back to the same string (words joined by single spaces).

>>> tok = world_tokenizer()
>>> tok.decode(tok("the circle moves up .", add_special_tokens=False)["input_ids"])
'the circle moves up .'
>>> tok.convert_ids_to_tokens([55, 56, 57])
['<image>', '<video>', 'in']
"""

from __future__ import annotations

from evcascade.models.tiny import IMAGE_TOKEN, SPECIAL_TOKENS, VIDEO_TOKEN

TEMPLATE_WORDS: tuple[str, ...] = ("USER:", "ASSISTANT:")
"""Words of the Video-LLaVA chat template (``evcascade.decoding.prompting.VIDEO_LLAVA_TEMPLATE``)."""


def world_tokens() -> tuple[str, ...]:
    """Every token of the world tokenizer, in id order."""
    from evcascade.data.questions import DETAIL_WORDS, first_vocabulary

    return (*SPECIAL_TOKENS, *TEMPLATE_WORDS, *first_vocabulary(), IMAGE_TOKEN, VIDEO_TOKEN, *DETAIL_WORDS)


def world_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` over ``world_tokens()``; adds ``<s>`` in front, as Llama's does.

    Save it with ``save_pretrained`` next to the model; ``AutoTokenizer.from_pretrained`` loads it back.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(world_tokens())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN},
    )
    tokenizer.add_bos_token = True
    return tokenizer
