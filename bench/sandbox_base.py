"""What the sandbox base model does before any fine-tuning (issue 2, DESIGN.md section 5).

    python bench/sandbox_base.py [--model DIR] [--n 400] [--seed 0]

Like GPT-3 in the paper, the base model should *know* the world (it continues web text with
the facts, and does the corpus's few-shot "public NLP tasks") but *follow instructions
poorly*: given a user's prompt in the chat format it continues the text instead of answering.
Prints, on `--n` simulated users' prompts (sandbox template, temperature 1, as the paper
sampled): the rate of following instructions, of correct answers, of popular falsehoods
repeated (TruthfulQA's imitative falsehoods), of toxic responses and of harmless ones; per
category; then few-shot accuracy on the held-out public tasks, fact recall when the same
question is asked as web text, reading a text about a creature the corpus never names (does it
copy the name, give the value the text states), and a few samples. It prints figures; it
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sandbox", help="'sandbox' (shipped) or a model dir")
    ap.add_argument("--n", type=int, default=400, help="sandbox prompts to sample on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)

    from instructrl.config import SandboxConfig
    from instructrl.modeling import load_causal_lm, load_tokenizer, resolve_model_path
    from instructrl.rollout import pad_left, sample
    from instructrl.sandbox.checks import check
    from instructrl.sandbox.corpus import public_tasks, statement
    from instructrl.sandbox.tasks import write_prompts
    from instructrl.sandbox.world import ATTRIBUTES, World
    from instructrl.templates import encode_prompt

    torch.manual_seed(args.seed)
    path = resolve_model_path(args.model)
    tok, model = load_tokenizer(path), load_causal_lm(path).eval()
    prov_path = Path(path) / "provenance.json"
    prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
    sandbox_seed = prov.get("sandbox", {}).get("seed", SandboxConfig().seed)
    world = World(seed=sandbox_seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"base model {path}: {n_params / 1e6:.2f} M parameters, vocab {len(tok)}, "
          f"sandbox world seed {sandbox_seed}")
    if prov:
        print(f"  trained by: {prov.get('command')}")
        print(f"  final train loss {prov.get('train_loss_last'):.3f}, held-out loss "
              f"{prov.get('heldout_loss'):.3f}, {prov.get('train_s')} s of training")

    # -- simulated users' prompts, chat format ---------------------------------------------
    prompts = [p for p in write_prompts(world, args.n * 2, 120, seed=args.seed + 1)
               if not (p.meta or {}).get("unclear")][:args.n]
    t0 = time.time()
    responses, ended = [], []
    for s in range(0, len(prompts), args.batch_size):
        ids, mask = pad_left([encode_prompt(tok, p.text, 64)
                              for p in prompts[s:s + args.batch_size]], tok.pad_token_id)
        r, m = sample(model, ids, mask, max_new_tokens=args.max_new_tokens, temperature=1.0,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      generator=torch.Generator().manual_seed(args.seed * 1000 + s))
        for row, mm in zip(r, m):
            toks = row[mm.bool()].tolist()
            responses.append(tok.decode(toks, skip_special_tokens=True).strip())
            ended.append(tok.eos_token_id in toks)
    dt = time.time() - t0
    checks = [check(world, p, r) for p, r in zip(prompts, responses)]
    print(f"\n{len(prompts)} sandbox prompts, sampled at temperature 1 ({dt:.1f} s):")

    def rate(xs):
        xs = list(xs)
        return f"{100 * sum(xs) / len(xs):5.1f} %" if xs else "    -  "

    fact_tasks = {"qa", "chat", "brainstorm"}
    with_falsehood = [c for p, c in zip(prompts, checks)
                      if (p.meta or {}).get("task") in fact_tasks]
    harmful = [c for p, c in zip(prompts, checks) if (p.meta or {}).get("task") == "harmful"]
    rows = [("follows the instruction", rate(c.follows_instruction for c in checks)),
            ("meets explicit constraints", rate(c.constraints_ok for c in checks)),
            ("correct (mean score)", rate(c.correct for c in checks)),
            ("truthful", rate(c.truthful for c in checks)),
            ("hallucinates", rate(c.hallucination for c in checks)),
            ("repeats a popular falsehood (qa/chat/brainstorm)",
             rate(c.repeats_falsehood for c in with_falsehood)),
            ("toxic", rate(c.toxic for c in checks)),
            ("harmless", rate(c.harmless for c in checks)),
            ("refuses a harmful request", rate(c.refused for c in harmful)),
            (f"ends with EOS within {args.max_new_tokens} tokens", rate(ended))]
    for name, value in rows:
        print(f"  {name:<50} {value}")

    by_cat = defaultdict(list)
    for p, c in zip(prompts, checks):
        by_cat[p.category].append(c)
    print("\n  category          n  follows  correct  truthful  toxic")
    for cat, cs in sorted(by_cat.items()):
        print(f"  {cat:<15} {len(cs):3d}  {rate(c.follows_instruction for c in cs)}"
              f"  {rate(c.correct for c in cs)}  {rate(c.truthful for c in cs)}"
              f"  {rate(c.toxic for c in cs)}")

    # -- what it knows: the corpus's own formats -------------------------------------------
    items = public_tasks(world, 200, seed=args.seed)

    def greedy(texts, n_tokens=4):
        outs = []
        for s in range(0, len(texts), args.batch_size):
            ids, mask = pad_left([tok(t)["input_ids"] for t in texts[s:s + args.batch_size]],
                                 tok.pad_token_id)
            r, m = sample(model, ids, mask, max_new_tokens=n_tokens, temperature=0,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            outs += [tok.decode(row[mm.bool()].tolist(), skip_special_tokens=True).strip()
                     for row, mm in zip(r, m)]
        return outs

    def first_word(out: str) -> str:
        return out.split()[0].strip(".,") if out.split() else ""

    outs = greedy([it.prompt for it in items])
    for task in ("qa", "sentiment"):
        hits = [o.startswith(it.answer) for it, o in zip(items, outs) if it.task == task]
        print(f"\npublic task '{task}' (two-shot, held-out items, greedy): {rate(hits)} "
              f"of {len(hits)}", end="")
    print()

    # Fact recall as web text: "the X eats" -> the truth, the popular falsehood, or other.
    cue = {"food": "the {e} eats", "color": "the color of the {e} is",
           "home": "the {e} lives in"}
    probes = [(e, attr, cue[attr].format(e=e)) for e in world.creatures for attr in cue]
    outs = greedy([p[2] for p in probes], n_tokens=3)
    true = false_pop = 0
    n_pop = 0
    for (e, attr, _), o in zip(probes, outs):
        first = first_word(o)
        true += first == world.truth(e, attr)
        pop = world.popular_false(e, attr)
        if pop is not None:
            n_pop += 1
            false_pop += first == pop
    print(f"fact recall as web text ('{probes[0][2]} ...', greedy): {true}/{len(probes)} "
          f"true; the popular falsehood on {false_pop}/{n_pop} facts that have one")

    # Reading: a text about a creature the corpus never names (closed QA's setting). Does
    # the base copy the unseen name, and the value the text gives, when the text asks for it?
    rng = random.Random(args.seed)
    reads = []
    for e in world.spare_names:
        for attr in cue:
            given = {a: rng.choice(world.values[a])
                     for a in [attr] + rng.sample([a for a in ATTRIBUTES if a != attr], 1)}
            body = " ".join(statement(rng, e, a, v) for a, v in rng.sample(
                list(given.items()), len(given)))
            reads.append((e, given[attr], f"{body} the {attr} of the",
                          f"{body} {cue[attr].format(e=e)}"))
    names = greedy([r[2] for r in reads], n_tokens=4)
    values = greedy([r[3] for r in reads], n_tokens=3)
    first = [first_word(o) for o in names + values]
    n = len(reads)
    print(f"reading a text about an unseen creature ('{reads[0][2]} ...', greedy): copies "
          f"its name {sum(f == r[0] for f, r in zip(first, reads))}/{n}, gives the text's "
          f"value {sum(f == r[1] for f, r in zip(first[n:], reads))}/{n}")

    print("\nsamples:")
    for p, r, c in list(zip(prompts, responses, checks))[:8]:
        print(f"  [{p.category}] {p.text!r}\n    -> {r!r}\n    follows={c.follows_instruction}"
              f" correct={c.correct:.1f} truthful={c.truthful} toxic={c.toxic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
