"""What the pipeline asks of the sandbox: its data files, demonstrations, rankings and
held-out judgments. The world is rebuilt from `SandboxConfig` in every stage (it is a pure
function of the seed), never pickled.

- `generate(cfg, run_dir)`: RUN/data/raw_prompts.jsonl, labelers.jsonl, ptx.jsonl.
- `demonstrate(cfg, run_dir)`: RUN/data/demonstrations.jsonl from the prepared prompts.
- `Sandbox(cfg).label_rankings(prompts, samples)`: Ranking records by training labelers.
- `Sandbox(cfg).heldout_judge(prompt, a, b)`: a held-out labeler compares two responses.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from instructrl.config import SandboxConfig
from instructrl.data.jsonl import atomic_write_text, read_records, write_records
from instructrl.data.records import Demonstration, Prompt, Ranking, Response
from instructrl.errors import InputError
from instructrl.sandbox.checks import Checks, check
from instructrl.sandbox.corpus import corpus
from instructrl.sandbox.labelers import SimLabeler, assign, make_labelers
from instructrl.sandbox.tasks import write_prompts
from instructrl.sandbox.world import World


@dataclass(frozen=True)
class Judgment:
    """A held-out labeler's comparison of response `a` with response `b` (paper section 4)."""

    labeler_id: str
    score: float  # 1.0 a preferred, 0.0 b preferred, 0.5 tie or skipped
    likert: tuple[int, int]
    flags: tuple[list[str], list[str]]


class Sandbox:
    """The world and its labelers for one config (built once per stage)."""

    def __init__(self, cfg: SandboxConfig | None = None):
        self.cfg = cfg or SandboxConfig()
        self.world = World(self.cfg.seed)
        self.labelers = make_labelers(self.world, self.cfg.n_labelers,
                                      self.cfg.n_heldout_labelers, seed=self.cfg.seed,
                                      noise=self.cfg.labeler_noise,
                                      tie_margin=self.cfg.tie_margin)
        self.train_labelers = [lab for lab in self.labelers if not lab.heldout]
        self.heldout_labelers = [lab for lab in self.labelers if lab.heldout]

    def check(self, prompt: Prompt, response: str) -> Checks:
        return check(self.world, prompt, response)

    def labeler(self, labeler_id: str) -> SimLabeler:
        for lab in self.labelers:
            if lab.id == labeler_id:
                return lab
        raise InputError(f"unknown sandbox labeler {labeler_id!r}", field="labeler_id")

    def demonstration(self, prompt: Prompt) -> Demonstration | None:
        """One demonstration by a training labeler assigned at random; None for a prompt
        with unclear intent (labelers skip those, App. B)."""
        if prompt.meta.get("unclear"):
            return None
        lab = assign(self.train_labelers, ("demo", prompt.id), self.cfg.seed)
        return Demonstration(prompt.id, lab.id, lab.demonstrate(prompt))

    def label_rankings(self, prompts: list[Prompt], samples: list[list[Response]], *,
                       salt: str = "") -> list[Ranking]:
        """Rank each prompt's K responses by a training labeler assigned at random per
        (prompt, salt); pass the round number as `salt` so rounds get fresh labelers and
        noise. Unclear prompts come back with `skipped="unclear intent"`."""
        if len(prompts) != len(samples):
            raise ValueError(f"{len(prompts)} prompts but {len(samples)} sample lists")
        out = []
        for p, responses in zip(prompts, samples):
            lab = assign(self.train_labelers, ("rank", p.id, salt), self.cfg.seed)
            out.append(lab.rank(p, responses, salt=salt))
        return out

    def heldout_judge(self, prompt: Prompt, a: str, b: str, *, salt: str = "") -> Judgment:
        """A held-out labeler (assigned per prompt) compares `a` with `b`: win rates and
        Likert scores for evaluation (paper section 4.1). Held-out labelers never label
        training data."""
        return self.judge(prompt, a, b, salt=salt, pool=self.heldout_labelers)

    def judge(self, prompt: Prompt, a: str, b: str, *, salt: str = "", pool=None) -> Judgment:
        """A labeler of `pool` (default: the held-out labelers), assigned per prompt,
        compares `a` with `b`. The training labelers are the pool for choosing a recipe's
        settings (bench/choose_ppo.py), so the held-out ones judge only the final models."""
        lab = assign(pool or self.heldout_labelers, ("judge", prompt.id, salt), self.cfg.seed)
        r = lab.rank(prompt, [Response(a, "a"), Response(b, "b")], salt=salt)
        if r.skipped is not None:
            la, fa = lab.rate(prompt, a, salt=salt)
            lb, fb = lab.rate(prompt, b, salt=salt)
            return Judgment(lab.id, 0.5, (la, lb), (fa, fb))
        score = 0.5 if len(r.ranking) == 1 else (1.0 if r.ranking[0] == [0] else 0.0)
        return Judgment(lab.id, score, (r.likert[0], r.likert[1]), (r.flags[0], r.flags[1]))

    def heldout_rate(self, prompt: Prompt, response: str, *, salt: str = ""
                     ) -> tuple[str, int, list[str]]:
        """(labeler id, Likert 1-7, flags) for one response by a held-out labeler."""
        lab = assign(self.heldout_labelers, ("rate", prompt.id, salt), self.cfg.seed)
        likert, flags = lab.rate(prompt, response, salt=salt)
        return lab.id, likert, flags


def label_rankings(cfg: SandboxConfig, prompts: list[Prompt], samples: list[list[Response]],
                   *, salt: str = "") -> list[Ranking]:
    """Module-level convenience for `Sandbox(cfg).label_rankings`."""
    return Sandbox(cfg).label_rankings(prompts, samples, salt=salt)


def generate(cfg: SandboxConfig, run_dir: str | Path) -> dict:
    """Write RUN/data/{raw_prompts,labelers,ptx}.jsonl (each atomically); return counts."""
    sb = Sandbox(cfg)
    data = Path(run_dir) / "data"
    prompts = write_prompts(sb.world, cfg.n_prompts, cfg.n_users, seed=cfg.seed)
    # ptx: same distribution as pretraining (App. C.4), a stream of its own.
    ptx = corpus(sb.world, cfg.n_ptx_docs, seed=cfg.seed + 1_000_003)
    write_records(data / "raw_prompts.jsonl", prompts)
    write_records(data / "labelers.jsonl", [lab.record() for lab in sb.labelers])
    atomic_write_text(data / "ptx.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in ptx))
    return {"prompts": len(prompts),
            "users": len({p.user_id for p in prompts}),
            "categories": dict(Counter(p.category for p in prompts).most_common()),
            "styles": dict(Counter(p.style for p in prompts).most_common()),
            "unclear": sum(bool(p.meta.get("unclear")) for p in prompts),
            "labelers": len(sb.train_labelers), "heldout_labelers": len(sb.heldout_labelers),
            "ptx_docs": len(ptx)}


def demonstrate(cfg: SandboxConfig, run_dir: str | Path) -> dict:
    """One demonstration per train/valid prompt of RUN/data/prompts.jsonl (prepared: split
    set), by a training labeler; write RUN/data/demonstrations.jsonl atomically."""
    data = Path(run_dir) / "data"
    path = data / "prompts.jsonl"
    prompts = read_records(path, Prompt.from_dict)
    for i, p in enumerate(prompts, 1):
        if p.split is None:
            raise InputError("prompt has no split: run `instructrl data prepare` first",
                             path=str(path), line=i, field="split")
    sb = Sandbox(cfg)
    demos = []
    skipped = 0
    for p in prompts:
        if p.split not in ("train", "valid"):
            continue
        d = sb.demonstration(p)
        if d is None:
            skipped += 1
        else:
            demos.append(d)
    write_records(data / "demonstrations.jsonl", demos)
    return {"demonstrations": len(demos), "skipped_unclear": skipped,
            "by_labeler": dict(sorted(Counter(d.labeler_id for d in demos).items()))}
