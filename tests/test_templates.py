"""Prompts as model input (instructrl.templates): chat turns, truncation by whole turns and
then the user's text, the settable chat template and system prompt, the sandbox format."""

from __future__ import annotations

import pytest

from instructrl.config import ModelConfig
from instructrl.errors import InputError
from instructrl.templates import (configure_tokenizer, encode_example, encode_prompt,
                                  format_prompt)

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] "
          "+ '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# SmolLM2-Instruct's template: a default system turn when the conversation has none.
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOL = ("{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
GEN = f"{IM_START}assistant\n"

WORDS = "the zorp eats fish blip lives in caves red blue what does where is a".split()


def sentence(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n))


@pytest.fixture
def plain_tok(tiny_model_dir):
    from instructrl.modeling import load_tokenizer
    tok = load_tokenizer(tiny_model_dir)
    assert not getattr(tok, "chat_template", None)
    return tok


@pytest.fixture
def chat_tok(plain_tok):
    plain_tok.add_tokens([IM_START, IM_END], special_tokens=True)
    plain_tok.chat_template = CHATML
    return plain_tok


def decode(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=False)


def conversation(n_exchanges: int, system: str | None = "Be brief.") -> list[dict]:
    turns = [{"role": "system", "content": system}] if system is not None else []
    for i in range(n_exchanges):
        turns += [{"role": "user", "content": f"q{i} " + sentence(i, 6)},
                  {"role": "assistant", "content": f"a{i} " + sentence(i + 1, 6)}]
    return turns + [{"role": "user", "content": "last question " + sentence(99, 5)}]


def test_the_sandbox_single_turn_format_is_unchanged(plain_tok):
    text = "what does the zorp eat"
    assert format_prompt(plain_tok, text) == f"user: {text}\nassistant:\n"
    assert format_prompt(plain_tok, [{"role": "user", "content": text}]) == \
        f"user: {text}\nassistant:\n"
    ids = plain_tok(f"user: {text}\nassistant:\n", add_special_tokens=False)["input_ids"]
    assert encode_prompt(plain_tok, text, 64) == ids


def test_the_sandbox_template_over_turns_and_its_system_prompt(plain_tok):
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "what does the zorp eat"}]
    assert format_prompt(plain_tok, turns) == \
        "user: hi\nassistant: hello\nuser: what does the zorp eat\nassistant:\n"
    configure_tokenizer(plain_tok, ModelConfig(system_prompt="be brief."))
    assert format_prompt(plain_tok, "hi") == "system: be brief.\nuser: hi\nassistant:\n"
    # The prompt's own system turn wins over the setting.
    own = [{"role": "system", "content": "be long."}, {"role": "user", "content": "hi"}]
    assert format_prompt(plain_tok, own) == "system: be long.\nuser: hi\nassistant:\n"
    configure_tokenizer(plain_tok, ModelConfig(system_prompt=""))
    assert format_prompt(plain_tok, "hi") == "user: hi\nassistant:\n"


def test_chat_template_renders_turns(chat_tok):
    turns = conversation(1)
    out = format_prompt(chat_tok, turns)
    assert out == (f"{IM_START}system\nBe brief.{IM_END}\n{IM_START}user\n{turns[1]['content']}"
                   f"{IM_END}\n{IM_START}assistant\n{turns[2]['content']}{IM_END}\n"
                   f"{IM_START}user\n{turns[3]['content']}{IM_END}\n{GEN}")
    assert encode_prompt(chat_tok, turns, 10_000) == \
        chat_tok(out, add_special_tokens=False)["input_ids"]


def test_a_long_conversation_loses_its_oldest_whole_exchanges(chat_tok):
    turns = conversation(6)
    full = encode_prompt(chat_tok, turns, 10_000)
    budget = len(full) * 2 // 3
    ids = encode_prompt(chat_tok, turns, budget)
    assert len(ids) <= budget
    # The longest run of the latest whole exchanges that fits, with the system turn.
    kept = None
    for k in range(1, 7):
        candidate = turns[:1] + turns[1 + 2 * k:]
        ref = chat_tok(format_prompt(chat_tok, candidate), add_special_tokens=False)
        if len(ref["input_ids"]) <= budget:
            kept = candidate
            break
    assert kept is not None and 2 < len(kept) < len(turns)
    assert decode(chat_tok, ids) == format_prompt(chat_tok, kept)
    text = decode(chat_tok, ids)
    assert text.startswith(f"{IM_START}system\nBe brief.{IM_END}\n{IM_START}user\n")
    assert "q0 " not in text and text.endswith(f"{turns[-1]['content']}{IM_END}\n{GEN}")


def test_a_long_user_turn_keeps_its_end_and_the_role_headers(chat_tok):
    question = " ".join(sentence(i, 8) for i in range(40)) + " so what does the zorp eat?"
    turns = conversation(2, system="Be brief.")[:1] + [{"role": "user", "content": question}]
    empty = len(chat_tok(format_prompt(chat_tok, turns[:1] + [{"role": "user", "content": ""}]),
                         add_special_tokens=False)["input_ids"])
    for budget in (empty + 1, empty + 10, empty + 60):
        ids = encode_prompt(chat_tok, turns, budget)
        text = decode(chat_tok, ids)
        head = f"{IM_START}system\nBe brief.{IM_END}\n{IM_START}user\n"
        tail = f"{IM_END}\n{GEN}"
        assert len(ids) <= budget
        assert text.startswith(head) and text.endswith(tail), text
        kept = text[len(head):-len(tail)]
        assert kept and question.endswith(kept)
        # As much as fits: one more character does not.
        more = turns[:1] + [{"role": "user", "content": question[-(len(kept) + 1):]}]
        assert len(chat_tok(format_prompt(chat_tok, more),
                            add_special_tokens=False)["input_ids"]) > budget
    # Multi-turn and still too long: all history goes, then the last turn is cut.
    long_last = conversation(4)[:-1] + [{"role": "user", "content": question}]
    text = decode(chat_tok, encode_prompt(chat_tok, long_last, empty + 10))
    assert text.startswith(f"{IM_START}system\nBe brief.{IM_END}\n{IM_START}user\n")
    assert "q0 " not in text and "a3 " not in text and text.endswith(f"zorp eat?{IM_END}\n{GEN}")


def test_when_not_even_an_empty_turn_fits_the_ids_are_cut_from_the_left(chat_tok):
    turns = conversation(0)
    empty = chat_tok(format_prompt(chat_tok, turns[:1] + [{"role": "user", "content": ""}]),
                     add_special_tokens=False)["input_ids"]
    full = encode_prompt(chat_tok, turns, 10_000)
    budget = len(empty) - 1
    assert encode_prompt(chat_tok, turns, budget) == full[-budget:]


def test_one_bos_first_however_the_prompt_is_cut(chat_tok):
    from tokenizers import processors

    bos = chat_tok.bos_token_id
    chat_tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", bos)])
    assert chat_tok("a", add_special_tokens=True)["input_ids"][0] == bos
    turns = conversation(6)
    full = encode_prompt(chat_tok, turns, 10_000)
    assert full[0] == bos and full.count(bos) == 1
    for budget in (len(full) // 2, 30, 12, 5):  # whole turns, the user's text, the left cut
        ids = encode_prompt(chat_tok, turns, budget)
        assert len(ids) <= budget and ids[0] == bos and ids.count(bos) == 1, budget
    # A template that writes BOS itself gets no second one.
    chat_tok.chat_template = "<bos>" + CHATML
    ids = encode_prompt(chat_tok, "hi", 100)
    assert ids[0] == bos and ids.count(bos) == 1


def test_system_prompt_setting_over_a_default_system_turn(chat_tok):
    chat_tok.chat_template = SMOL
    assert DEFAULT_SYSTEM in format_prompt(chat_tok, "hi")  # None: the template's default
    configure_tokenizer(chat_tok, ModelConfig(system_prompt="Answer in French."))
    out = format_prompt(chat_tok, "hi")
    assert out.startswith(f"{IM_START}system\nAnswer in French.{IM_END}\n") and \
        DEFAULT_SYSTEM not in out
    configure_tokenizer(chat_tok, ModelConfig(system_prompt=""))
    out = format_prompt(chat_tok, "hi")
    assert out == f"{IM_START}system\n{IM_END}\n{IM_START}user\nhi{IM_END}\n{GEN}"
    short = encode_prompt(chat_tok, "hi", 1000)
    configure_tokenizer(chat_tok, ModelConfig(system_prompt=None))
    assert DEFAULT_SYSTEM in format_prompt(chat_tok, "hi")
    assert len(encode_prompt(chat_tok, "hi", 1000)) > len(short) + 10


def test_chat_template_setting(chat_tok, tmp_path):
    configure_tokenizer(chat_tok, ModelConfig(chat_template="none"))
    assert format_prompt(chat_tok, "hi") == "user: hi\nassistant:\n"
    path = tmp_path / "t.jinja"
    path.write_text(SMOL)
    configure_tokenizer(chat_tok, ModelConfig(chat_template=str(path)))
    assert DEFAULT_SYSTEM in format_prompt(chat_tok, "hi")
    configure_tokenizer(chat_tok, ModelConfig(chat_template=CHATML))
    assert format_prompt(chat_tok, "hi") == f"{IM_START}user\nhi{IM_END}\n{GEN}"
    # It is the tokenizer's template: save_pretrained keeps it. The system prompt is a
    # setting applied at every load, not saved.
    configure_tokenizer(chat_tok, ModelConfig(chat_template=str(path), system_prompt="S."))
    chat_tok.save_pretrained(tmp_path / "saved")
    from instructrl.modeling import load_tokenizer
    again = load_tokenizer(tmp_path / "saved")
    assert again.chat_template == SMOL
    assert DEFAULT_SYSTEM in format_prompt(again, "hi")


@pytest.mark.parametrize("cfg, field", [
    (ModelConfig(chat_template="templates/nope.jinja"), "model.chat_template"),
    (ModelConfig(chat_template="{% if %}"), "model.chat_template"),
    (ModelConfig(chat_template="{{ raise_exception('no') }}"), "model.chat_template"),
    (ModelConfig(chat_template="{% if messages[0]['role'] == 'system' %}"
                               "{{ raise_exception('System role not supported') }}{% endif %}"
                               + CHATML, system_prompt="S."), "model.system_prompt"),
])
def test_a_bad_template_setting_fails_at_configuration(chat_tok, cfg, field):
    with pytest.raises(InputError) as e:
        configure_tokenizer(chat_tok, cfg)
    assert e.value.field == field


def test_an_hh_prompt_renders_as_turns(chat_tok):
    from instructrl.data.formats import MAPPERS, SourceInfo

    h, a = "\n\nHuman:", "\n\nAssistant:"
    multi = f"{h} where does the zorp live?{a} In caves.{h} and what does it eat?{a}"
    row = {"chosen": multi + " Fish.", "rejected": multi + " Rocks."}
    p = MAPPERS["hh"](row, SourceInfo(kind="preferences", name="hh"), 0).prompts[0]
    text = format_prompt(chat_tok, p.chat)
    assert "Human:" not in text and text.count(f"{IM_START}user\n") == 2
    q, r = encode_example(chat_tok, p.chat, "Fish.", 1000, 10)
    assert decode(chat_tok, q) == text and r[-1] == chat_tok.eos_token_id
