"""How a prompt becomes model input, and a (prompt, response) pair becomes token ids.

Models with a chat template (SmolLM2-Instruct, Llama-3-Instruct, ...) use it. Models without
one, like the sandbox base model, use the sandbox template

    user: {text}
    assistant:
    {response}<eos>

i.e. ``"user: " + text + "\\nassistant:\\n"``: lower case like the sandbox's web text, and it
ends with a newline so the response's first word is tokenized the way a word that starts a
line or document is, whether the response is tokenized on its own or after the prompt.
A base model has seen no such dialogue format; supervised fine-tuning teaches it (section 3.5).
"""

from __future__ import annotations

SANDBOX_TEMPLATE = "user: {text}\nassistant:\n"


def format_prompt(tokenizer, text: str) -> str:
    """The text the model sees before its response: the tokenizer's chat template with a
    generation prompt when it has one, else `SANDBOX_TEMPLATE`."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                             add_generation_prompt=True, tokenize=False)
    return SANDBOX_TEMPLATE.format(text=text)


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts a BOS token first when asked for special tokens."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def encode_prompt(tokenizer, prompt_text: str, max_prompt_tokens: int) -> list[int]:
    """Token ids of `format_prompt(tokenizer, prompt_text)`, at most `max_prompt_tokens`.

    A BOS token is put first when the tokenizer normally adds one and the template did not
    already write it (chat templates of Llama-style models do), so there is never a second
    BOS. A prompt that is too long is truncated from the LEFT, keeping its end (the question
    and the generation prompt the response follows) and the leading BOS.
    """
    if max_prompt_tokens < 1:
        raise ValueError("max_prompt_tokens must be >= 1")
    ids = tokenizer(format_prompt(tokenizer, prompt_text), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    has_bos = bool(ids) and bos is not None and ids[0] == bos
    if not has_bos and _adds_bos(tokenizer):
        ids, has_bos = [bos] + ids, True
    if len(ids) > max_prompt_tokens:
        if has_bos and max_prompt_tokens > 1:
            ids = [bos] + ids[len(ids) - (max_prompt_tokens - 1):]
        else:
            ids = ids[len(ids) - max_prompt_tokens:]
    return ids


def encode_response(tokenizer, response_text: str, max_response_tokens: int) -> list[int]:
    """Token ids of the response followed by EOS, at most `max_response_tokens`.

    A response that is too long is truncated from the RIGHT and then has no EOS: the text
    did not end there, so the model is not taught to stop mid-sentence, and a reward model
    reading it sees a response that was cut off.
    """
    if max_response_tokens < 1:
        raise ValueError("max_response_tokens must be >= 1")
    ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
    ids = ids + [tokenizer.eos_token_id]
    return ids[:max_response_tokens]


def encode_example(tokenizer, prompt_text: str, response_text: str, max_prompt_tokens: int,
                   max_response_tokens: int) -> tuple[list[int], list[int]]:
    """(query ids, response ids) of one demonstration or sampled response; see
    `encode_prompt` (left truncation, one BOS) and `encode_response` (EOS, right truncation)."""
    return (encode_prompt(tokenizer, prompt_text, max_prompt_tokens),
            encode_response(tokenizer, response_text, max_response_tokens))
