"""How a prompt becomes model input, and a (prompt, response) pair becomes token ids.

A prompt is a string (one user turn) or chat turns, ``[{"role": "system" | "user" |
"assistant", "content": str}, ...]`` ending with the user's (`Prompt.chat`). Models with a
chat template (SmolLM2-Instruct, Llama-3-Instruct, ...) render the turns with it and its
generation prompt. Models without one, like the sandbox base model, use the sandbox template

    user: {text}
    assistant:
    {response}<eos>

i.e. ``"user: " + text + "\nassistant:\n"``: lower case like the sandbox's web text, and it
ends with a newline so the response's first word is tokenized the way a word that starts a
line or document is, whether the response is tokenized on its own or after the prompt.
Several turns are one line each before it ("system: ...\nuser: ...\nassistant: ...\n").
A base model has seen no such dialogue format; supervised fine-tuning teaches it (section 3.5).

The template and the system prompt are settings (`model.chat_template`, `model.system_prompt`)
that `configure_tokenizer` applies to a loaded tokenizer. A template set that way is the
tokenizer's `chat_template`, which `save_pretrained` writes and a later load reads back. The
system prompt is not part of a saved tokenizer: it is an attribute that `configure_tokenizer`
sets from the config at every load (so it cannot go stale in a checkpoint).

A prompt longer than its token budget loses its oldest turns first, whole (a system turn and
the last user turn stay), then the start of the last user turn's text, and is rendered again:
the role headers and the generation prompt are never cut (`encode_prompt`).
"""

from __future__ import annotations

from pathlib import Path

from instructrl.errors import InputError

SANDBOX_TEMPLATE = "user: {text}\nassistant:\n"
# The tokenizer attribute holding the system prompt setting (None: the template's default).
SYSTEM_PROMPT_ATTR = "instructrl_system_prompt"


def configure_tokenizer(tokenizer, model_cfg):
    """Apply `model_cfg.chat_template` and `model_cfg.system_prompt` (config.ModelConfig) to
    `tokenizer` and check that the template renders a conversation; returns the tokenizer.

    chat_template: None keeps the tokenizer's own; 'none' removes it (the plain sandbox
    template); else a path to a Jinja file, or the Jinja text itself. system_prompt: None
    leaves the system turn to the template (some add a default one: SmolLM2's is 31 tokens);
    a string is a system turn before every prompt that has none ('' an empty one, which keeps
    such a default out)."""
    template = model_cfg.chat_template
    if template is not None:
        if template.strip().lower() == "none":
            tokenizer.chat_template = None
        else:
            tokenizer.chat_template = _template_text(template)
    setattr(tokenizer, SYSTEM_PROMPT_ATTR, model_cfg.system_prompt)
    # Render once now, so a broken template or one that refuses a system turn fails at load
    # with the setting's name, not in the middle of a stage.
    sample = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
              {"role": "user", "content": "Bye"}]
    try:
        _render(tokenizer, sample)
    except Exception as e:  # noqa: BLE001 - jinja errors, raise_exception() in templates
        raise InputError(f"the chat template cannot render a conversation: "
                         f"{type(e).__name__}: {e}", field="model.chat_template") from None
    if model_cfg.system_prompt is not None:
        try:
            format_prompt(tokenizer, sample)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"the chat template cannot render a system turn "
                             f"({type(e).__name__}: {e}); leave system_prompt unset",
                             field="model.system_prompt") from None
    return tokenizer


def _template_text(value: str) -> str:
    """A Jinja file's text, or `value` itself when it is a template."""
    try:
        path = Path(value).expanduser()
        if path.is_file():
            return path.read_text(encoding="utf-8")
    except OSError:  # a long template is no valid file name
        pass
    if "{{" in value or "{%" in value:
        return value
    raise InputError("neither a file nor a Jinja template (no '{{' or '{%')",
                     field="model.chat_template")


def chat_turns(tokenizer, prompt: str | list[dict]) -> list[dict]:
    """The turns a prompt is rendered from: a string is one user turn; the configured system
    prompt comes first when the prompt has no system turn of its own."""
    turns = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
             else [{"role": m["role"], "content": m["content"]} for m in prompt])
    system = getattr(tokenizer, SYSTEM_PROMPT_ATTR, None)
    if system is not None and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": system})
    return turns


def _plain(turns: list[dict]) -> str:
    """The sandbox template over turns; one user turn is exactly SANDBOX_TEMPLATE."""
    lines = [f"{m['role']}: {m['content']}\n" for m in turns
             if m["role"] != "system" or m["content"]]  # an empty system turn writes nothing
    return "".join(lines) + "assistant:\n"


def _render(tokenizer, turns: list[dict]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    return _plain(turns)


def format_prompt(tokenizer, prompt: str | list[dict]) -> str:
    """The text the model sees before its response: the tokenizer's chat template with a
    generation prompt when it has one, else the sandbox template (`SANDBOX_TEMPLATE` for a
    single user turn)."""
    return _render(tokenizer, chat_turns(tokenizer, prompt))


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts a BOS token first when asked for special tokens."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def _encode(tokenizer, turns: list[dict], adds_bos: bool) -> list[int]:
    """Token ids of the rendered turns; BOS first when the tokenizer normally adds one and
    the template did not already write it (chat templates of Llama-style models do)."""
    ids = tokenizer(_render(tokenizer, turns), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if adds_bos and not (ids and ids[0] == bos):
        ids = [bos] + ids
    return ids


def encode_prompt(tokenizer, prompt: str | list[dict], max_prompt_tokens: int) -> list[int]:
    """Token ids of `format_prompt(tokenizer, prompt)`, at most `max_prompt_tokens`, with
    one BOS first when the tokenizer normally adds one (never a second).

    Too long, the prompt is shortened the way a conversation is, keeping what the response
    answers and the text around it intact:
    1. the oldest turns are dropped, a user turn and the replies after it at a time (a
       system turn and the last user turn stay);
    2. then the last user turn keeps only the end of its text (the question usually is at
       the end), as much as fits, and is rendered again: role headers, the end-of-turn
       marks and the generation prompt are never cut;
    3. only when not even an empty user turn fits, the rendered ids are cut from the LEFT,
       keeping the end and a leading BOS (a budget smaller than the template's own tokens).
    """
    if max_prompt_tokens < 1:
        raise ValueError("max_prompt_tokens must be >= 1")
    adds_bos = _adds_bos(tokenizer)
    turns = chat_turns(tokenizer, prompt)
    full = _encode(tokenizer, turns, adds_bos)
    if len(full) <= max_prompt_tokens:
        return full
    head = turns[:1] if turns[0]["role"] == "system" else []
    history, last = turns[len(head):-1], turns[-1]
    while history:  # 1. drop the oldest exchange; history starts with a user turn again
        history = history[1:]
        while history and history[0]["role"] != "user":
            history = history[1:]
        ids = _encode(tokenizer, head + history + [last], adds_bos)
        if len(ids) <= max_prompt_tokens:
            return ids

    def keep(n: int) -> list[int]:  # the last n characters of the user's text
        content = last["content"]
        return _encode(tokenizer, head + [{**last, "content": content[len(content) - n:]}],
                       adds_bos)

    best = keep(0)
    if len(best) > max_prompt_tokens:  # 3. the template alone is over budget
        bos = tokenizer.bos_token_id
        if bos is not None and full[0] == bos and max_prompt_tokens > 1:
            return [bos] + full[len(full) - (max_prompt_tokens - 1):]
        return full[len(full) - max_prompt_tokens:]
    # 2. the most characters that fit: double while they fit, then bisect. Tokens grow with
    # characters (up to merges at the cut), and every candidate is measured as rendered.
    lo, hi, n = 0, len(last["content"]), max(1, max_prompt_tokens - len(best))
    while n < hi:
        ids = keep(n)
        if len(ids) > max_prompt_tokens:
            hi = n
            break
        lo, best, n = n, ids, n * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ids = keep(mid)
        if len(ids) <= max_prompt_tokens:
            lo, best = mid, ids
        else:
            hi = mid
    return best


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


def encode_example(tokenizer, prompt: str | list[dict], response_text: str,
                   max_prompt_tokens: int, max_response_tokens: int
                   ) -> tuple[list[int], list[int]]:
    """(query ids, response ids) of one demonstration or sampled response; see
    `encode_prompt` (whole turns, then the user's text from the left; one BOS) and
    `encode_response` (EOS, right truncation)."""
    return (encode_prompt(tokenizer, prompt, max_prompt_tokens),
            encode_response(tokenizer, response_text, max_response_tokens))
