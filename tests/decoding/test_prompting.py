"""Video-LLaVA prompts: template, placeholder expansion as the HF processor does it, text ids for drafters."""

import pytest
import torch

from evcascade.decoding.prompting import VIDEO_LLAVA_TEMPLATE, VideoLlavaPrompter, check_prompt_fits
from evcascade.errors import InputError
from evcascade.models.tiny import tiny_tokenizer, tiny_video_llava, tiny_video_llava_config


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def prompter(tok):
    return VideoLlavaPrompter(tok, tiny_video_llava_config(tok))


def processor_style_ids(tok, question: str, num_video_tokens: int) -> list[int]:
    """What ``VideoLlavaProcessor`` does: repeat the placeholder in the TEXT, then tokenise."""
    text = VIDEO_LLAVA_TEMPLATE.format(question=question).replace("<video>", "<video>" * num_video_tokens)
    return tok(text)["input_ids"]


def test_template_is_video_llava_7b_hf():
    expected = "USER: <video>\nWhy is this video funny? ASSISTANT:"  # the 7B-hf model card's example
    assert VIDEO_LLAVA_TEMPLATE.format(question="Why is this video funny?") == expected


def test_expansion_equals_processor_style_tokenisation(tok, prompter):
    prompt = prompter("what colour is the object ?")
    assert prompt.num_video_tokens == 8 * ((32 // 16) ** 2 + 1) == 40
    assert prompt.target_ids[0].tolist() == processor_style_ids(tok, "what colour is the object ?", 40)
    assert tok.convert_ids_to_tokens(prompt.target_ids[0, :3].tolist()) == ["<s>", "USER:", "<video>"]
    assert int((prompt.target_ids == tok.convert_tokens_to_ids("<video>")).sum()) == 40


def test_text_ids_drop_only_the_placeholders(tok, prompter):
    prompt = prompter("  how many objects are there ?  ")  # surrounding whitespace is stripped
    assert tok.convert_ids_to_tokens(prompt.text_ids[0].tolist()) == [
        "<s>", "USER:", "how", "many", "objects", "are", "there", "?", "ASSISTANT:"]
    assert torch.equal(prompter.text_ids_of(prompt.target_ids), prompt.text_ids)
    assert prompt.text == "USER: <video>\nhow many objects are there ? ASSISTANT:"


def test_num_frames_sets_the_placeholder_count(tok, prompter):
    prompt = prompter("what shape is it ?", num_frames=3)
    assert prompt.num_video_tokens == 15
    assert prompt.target_ids[0].tolist() == processor_style_ids(tok, "what shape is it ?", 15)


def test_model_accepts_the_expanded_prompt_and_generates(tok, prompter):
    model = tiny_video_llava(tok, seed=0)
    prompt = prompter("where does the object move ?")
    pixels = torch.randn(1, 8, 3, 32, 32)
    out = model.generate(input_ids=prompt.target_ids, attention_mask=torch.ones_like(prompt.target_ids),
                         pixel_values_videos=pixels, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (1, prompt.target_ids.shape[1] + 3)
    # one frame too few: the model itself rejects the placeholder count, so the count above is the one it expects
    with pytest.raises(ValueError, match="do not match"):
        model(input_ids=prompt.target_ids, pixel_values_videos=pixels[:, :7])


@pytest.mark.parametrize("question", ["", "   ", None, "what is <video> doing ?", "<image> what ?"])
def test_bad_questions_raise_input_error(prompter, question):
    with pytest.raises(InputError, match="question"):
        prompter(question)


def test_bad_num_frames_and_mismatched_tokenizer(tok, prompter):
    with pytest.raises(InputError, match="num_frames"):
        prompter("what ?", num_frames=0)
    config = tiny_video_llava_config(tok)
    config.video_token_id = 5
    with pytest.raises(InputError, match="video_token_id=5"):
        VideoLlavaPrompter(tok, config)
    with pytest.raises(InputError, match="template"):
        VideoLlavaPrompter(tok, tiny_video_llava_config(tok), template="USER: {question} ASSISTANT:")


def test_prompt_length_check_names_both_numbers(prompter):
    check_prompt_fits(100, 50, 150)  # exactly fits
    with pytest.raises(InputError, match=r"101 tokens.*\(150\).*\(50\)"):
        check_prompt_fits(101, 50, 150)
    check_prompt_fits(10_000, 50, None)  # unknown limit: nothing to check
    with pytest.raises(InputError, match="max_new_tokens"):
        check_prompt_fits(10, -1, 150)
    prompt = prompter("what ?")
    prompter.check_fits(prompt, 4096 - prompt.target_ids.shape[1])
    with pytest.raises(InputError, match="4096"):
        prompter.check_fits(prompt, 4097 - prompt.target_ids.shape[1])
