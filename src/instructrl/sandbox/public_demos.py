"""The sandbox's FLAN / T0: its public NLP tasks rewritten as instructions (paper Fig. 5).

The paper fine-tuned GPT-3 on FLAN and T0 (public NLP data sets, each item put into an
instruction template with a short target answer) and found labelers preferred it less than the
SFT model trained on demonstrations for users' prompts: public NLP data is mostly
classification and QA with one-word targets, while users mostly ask for open-ended generation
(paper section 4.1, Fig. 5). Here the public NLP tasks are the corpus's own (closed-book QA about
the world's facts and review sentiment, `corpus.public_tasks`), put into instruction templates
as FLAN's are, with FLAN-style targets: the fact's value or the sentiment label, one word.

    prompts, demos = public_task_demonstrations(world, n=1000, seed=0, n_valid=100)
    train_public(cfg, run, init)           # RUN/sft-public, like for like with RUN/sft

Items never coincide with the alignment tax's held-out public-task items: QA asks only the
(creature, attribute) pairs the corpus's task blocks hold (the tax asks the others) and
sentiment uses only the corpus's own reviews (the tax's are held out of it), so this holds for
every evaluation seed, not only the run's; the random stream is one of its own besides. Facts
with a popular falsehood are left out, as the tax leaves them out: they are TruthfulQA's probe.
Valid items are a hash-split of their own, so SFT's validation loss is on unseen items.

Only words the sandbox world knows (`World.vocab`) appear, so the shipped base model's
tokenizer reads them as it reads its corpus; templates live here, not in `text.py`, whose words
are the world's vocabulary.
"""

from __future__ import annotations

import random
from pathlib import Path

from instructrl.data.records import Demonstration, Prompt
from instructrl.sandbox import text as T
# The corpus's split of public-task items into seen and held-out (the tax's) ones.
from instructrl.sandbox.corpus import _public_pairs, _train_review
from instructrl.sandbox.world import World, rng_for, stable_hash

USER_ID = "public-nlp"  # the prompts' user: a data set, not one of the sandbox's users
LABELER_ID = "public-nlp"  # the targets are the data set's answer key, not a labeler's
VALID_MOD = 10  # 1 in VALID_MOD items (facts, reviews) is a validation item

# Instruction templates in the manner of FLAN's and T0's (several per task, zero-shot).
QA_TEMPLATES = (
    "answer the question: {q}",
    "answer this question. {q}",
    "{q}",
    "q: {q} a:",
    "question: {q} answer:",
    "trivia question: {q}",
    "here is a quiz question. {q} give a short answer.",
    "read the question and give the answer. {q}",
)
SENTIMENT_TEMPLATES = (
    "review: {x} is this review positive or negative?",
    "what is the sentiment of this review? {x}",
    "{x} what is the sentiment of this review?",
    "classify the sentiment of this text as positive or negative: {x}",
    "text: {x} is the sentiment positive or negative?",
    "review: {x} sentiment:",
    "{x} how would you describe the sentiment of this review?",
    "short review: {x} did they like it? positive or negative?",
)


def _is_valid(world: World, *key) -> bool:
    return stable_hash("public-demos-valid", world.seed, *key) % VALID_MOD == 0


def _qa(world: World, rng: random.Random, pairs: list[tuple[str, str]]) -> tuple[str, str, dict]:
    e, a = rng.choice(pairs)
    q = rng.choice(T.QUESTION[a]).format(e=e)
    answer = world.truth(e, a)
    return (rng.choice(QA_TEMPLATES).format(q=q), answer,
            {"task": "public_qa", "entity": e, "attribute": a, "question": q,
             "answer": answer})


def _sentiment(world: World, rng: random.Random, valid: bool) -> tuple[str, str, dict]:
    while True:  # a corpus review of the wanted split
        r, label = _train_review(world, rng)
        if _is_valid(world, r) == valid:
            break
    return (rng.choice(SENTIMENT_TEMPLATES).format(x=r), label,
            {"task": "public_sentiment", "review": r, "answer": label,
             "labels": list(T.LABELS["sentiment"])})


def public_task_demonstrations(world: World, n: int, seed: int = 0, *, n_valid: int = 0
                               ) -> tuple[list[Prompt], list[Demonstration]]:
    """`n` train and `n_valid` valid prompts of the public NLP tasks in instruction form
    (half closed-book QA, half sentiment), each with its target answer as the demonstration.
    Ids "pub-000000", ... (train first), user and labeler "public-nlp", style "plain",
    category "open_qa" (closed-book QA, as the paper's categories name it) or
    "classification"; `meta` holds the item and `"source": "public-nlp"`. Deterministic in
    (world.seed, seed)."""
    rng = rng_for("public-demos", world.seed, seed)
    # The corpus's seen QA pairs (the tax asks only the held-out ones), without falsehoods.
    seen = [p for p in _public_pairs(world, heldout=False) if p not in world.falsehoods]
    pairs = {v: [p for p in seen if _is_valid(world, *p) == v] for v in (False, True)}
    prompts, demos = [], []
    for i in range(n + n_valid):
        valid = i >= n
        if i % 2 == 0:
            text, answer, meta = _qa(world, rng, pairs[valid])
            category = "open_qa"
        else:
            text, answer, meta = _sentiment(world, rng, valid)
            category = "classification"
        p = Prompt(f"pub-{i:06d}", USER_ID, text, category, "plain",
                   split="valid" if valid else "train", meta={"source": "public-nlp", **meta})
        prompts.append(p)
        demos.append(Demonstration(p.id, LABELER_ID, answer))
    return prompts, demos


def train_public(cfg, run, init, n: int | None = None, stage: str = "sft-public", *,
                 n_valid: int | None = None) -> Path:
    """Supervised fine-tuning of `init` on public-task demonstrations for cfg.sandbox's world,
    into RUN/<stage>, with the SFT stage's settings (cfg.sft: epochs, batch size, ...).
    `n` defaults to the number of users' demonstrations on train prompts in RUN/data, and
    `n_valid` keeps the users' valid:train ratio, so the comparison with RUN/sft is like for
    like. The data it trained on is left in RUN/<stage>/data/. Resumes like `sft.train`."""
    from instructrl.data.jsonl import write_records
    from instructrl.distributed import runtime
    from instructrl.stages import sft

    prompts = run.prompts_by_id()
    by_split = {"train": 0, "valid": 0}
    for d in run.demonstrations():
        split = prompts[d.prompt_id].split if d.prompt_id in prompts else None
        if split in by_split:
            by_split[split] += 1
    if n is None:
        n = by_split["train"]
    if n_valid is None:
        n_valid = round(n * by_split["valid"] / max(by_split["train"], 1))
    data = public_task_demonstrations(World(cfg.sandbox.seed), n, cfg.sandbox.seed,
                                      n_valid=n_valid)
    if runtime().is_main:
        write_records(run.stage(stage) / "data" / "prompts.jsonl", data[0])
        write_records(run.stage(stage) / "data" / "demonstrations.jsonl", data[1])
    return sft.train(cfg, run, init, stage=stage, demonstrations=data)
