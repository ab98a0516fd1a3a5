"""The evaluation's benchmark modules as pure functions of (model, tokenizer, data, settings), on
the conftest's tiny random model and small fixtures in each data set's own format
(tests/fixtures): shared-prefix likelihoods and generation against plain computations,
TruthfulQA's MC1/MC2 and automatic metrics, RealToxicityPrompts figures and scorers (the
Perspective client against a local fake server), CrowS-Pairs and Winogender, lm-eval on a
custom local task, the held-out LM loss and the held-out-RM judge. Nothing downloads."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from instructrl.errors import InputError
from instructrl.evaluate import bias, lm, lm_tax, preference, toxicity, truthfulqa
from instructrl.modeling import load_causal_lm, load_tokenizer

FIX = Path(__file__).resolve().parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def lm_tok(tiny_model_dir):
    torch.manual_seed(0)
    model = load_causal_lm(tiny_model_dir).eval()
    return model, load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def talker(tiny_model_dir):
    """The tiny model with its EOS row zeroed, so greedy answers are not empty at once."""
    model = load_causal_lm(tiny_model_dir).eval()
    tok = load_tokenizer(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id].zero_()
    return model, tok


def naive_logprob(model, tok, ctx: str, cont: str) -> float:
    c = lm.start_ids(tok) + tok(ctx, add_special_tokens=False)["input_ids"]
    w = lm.start_ids(tok) + tok(ctx + cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = F.log_softmax(model(input_ids=torch.tensor([w])).logits.float(), -1)[0]
    return sum(float(lp[j - 1, w[j]]) for j in range(len(c), len(w)))


# ------------------------------------------------------------------ lm.py
def test_continuation_logprobs_match_whole_sequences_with_a_shared_primer(lm_tok):
    model, tok = lm_tok
    primer = "the zorp eats fish in caves. " * 4
    ctxs = [primer + "what does the blip eat?", primer + "where", primer + "red blue",
            "no primer here", primer + "what does the blip eat?"]
    conts = [" fish", " in caves red", " yes", " the zorp", " blue fish eats"]
    got = lm.continuation_logprobs(model, tok, ctxs, conts, batch_size=3)
    for (lp, n), c, x in zip(got, ctxs, conts):
        assert n >= 1
        assert lp == pytest.approx(naive_logprob(model, tok, c, x), abs=1e-4)


def test_generate_with_shared_prefix_matches_the_plain_greedy_sampler(talker):
    from instructrl.generation import sample_texts

    model, tok = talker
    texts = ["what does the zorp eat"] * 3 + ["where does the blip live", "red",
                                              "what does the zorp eat in caves"]
    ours = lm.generate(model, tok, lm.prompt_ids(tok, texts, 32), max_new_tokens=6,
                       temperature=0, batch_size=4)
    plain = sample_texts(model, tok, texts, max_prompt_tokens=32, max_new_tokens=6,
                         temperature=0, batch_size=4)
    assert ours == plain
    assert any(ours), "greedy answers should not all be empty with EOS suppressed"


def test_sampling_is_deterministic_given_the_seed(lm_tok):
    model, tok = lm_tok
    ids = lm.prompt_ids(tok, ["what does the zorp eat"] * 4, 32)
    a = lm.generate(model, tok, ids, max_new_tokens=5, seed=3)
    assert a == lm.generate(model, tok, ids, max_new_tokens=5, seed=3)


# ------------------------------------------------------------------ TruthfulQA
def test_truthfulqa_loads_csv_and_reports_bad_rows(tmp_path):
    src, qs = truthfulqa.load(str(FIX / "truthfulqa_sample.csv"))
    assert len(qs) == 4 and qs[0].best == "The zorp eats fish."
    assert qs[0].best in qs[0].correct and "The zorp eats caves." in qs[0].incorrect
    bad = tmp_path / "bad.csv"
    bad.write_text((FIX / "truthfulqa_sample.csv").read_text().replace(
        "The blip lives in the sky; Nowhere", ""))
    with pytest.raises(InputError) as e:
        truthfulqa.load(str(bad))
    assert "bad.csv:3" in str(e.value) and "Incorrect Answers" in str(e.value)


@pytest.mark.skipif(not (SHARED / "truthfulqa.csv").exists(), reason="../shared/data absent")
def test_truthfulqa_full_csv_parses_817_questions_and_slices_reproducibly():
    _, qs = truthfulqa.load(str(SHARED / "truthfulqa.csv"))
    assert len(qs) == 817
    assert truthfulqa.load(str(SHARED / "truthfulqa.csv"), n=20, seed=1)[1] == \
        truthfulqa.load(str(SHARED / "truthfulqa.csv"), n=20, seed=1)[1]


def test_mc1_mc2_follow_from_the_option_likelihoods(lm_tok):
    model, tok = lm_tok
    _, qs = truthfulqa.load(str(FIX / "truthfulqa_sample.csv"))
    got = truthfulqa.mc_scores(model, tok, qs, batch_size=5)
    mc1, mc2 = [], []
    for q in qs:
        t = [naive_logprob(model, tok, truthfulqa.context(q), " " + a) for a in q.correct]
        f = [naive_logprob(model, tok, truthfulqa.context(q), " " + a) for a in q.incorrect]
        mc1.append(float(t[q.correct.index(q.best)] > max(f)))
        e = [math.exp(x) for x in t + f]
        mc2.append(sum(e[:len(t)]) / sum(e))
    assert got["mc1"]["mean"] == pytest.approx(sum(mc1) / len(mc1))
    assert got["mc2"]["mean"] == pytest.approx(sum(mc2) / len(mc2), abs=1e-5)
    assert got["mc1"]["n"] == 4


def test_truthfulqa_automatic_metrics_and_no_comment():
    _, qs = truthfulqa.load(str(FIX / "truthfulqa_sample.csv"))
    q = qs[0]
    right = truthfulqa.similarity("The zorp eats fish.", q)
    wrong = truthfulqa.similarity("The zorp eats caves.", q)
    assert right["bleu_acc"] == right["rouge1_acc"] == 1.0 and right["bleu_diff"] > 0
    assert wrong["bleu_acc"] == wrong["rouge1_acc"] == 0.0 and wrong["rougeL_diff"] < 0
    # "I have no comment." is a true reference (TruthfulQA's convention).
    assert truthfulqa.similarity("I have no comment.", q)["rouge1_acc"] == 1.0
    s = truthfulqa.score_answers(["I have no comment.", "The blip lives in caves."], qs[:2])
    assert s["no_comment"]["mean"] == 0.5 and s["rouge1_acc"]["mean"] == 1.0
    assert truthfulqa.clean_answer(" The zorp eats fish.\n\nQ: next question") == \
        "The zorp eats fish."


def test_truthfulqa_evaluate_gives_every_figure_for_both_prompts(talker):
    model, tok = talker
    _, qs = truthfulqa.load(str(FIX / "truthfulqa_sample.csv"))
    r = truthfulqa.evaluate(model, tok, qs, max_new_tokens=4, batch_size=4)
    for kind in truthfulqa.PROMPTS:
        assert set(r[kind]) >= {"bleu_acc", "rouge1_acc", "rougeL_diff", "no_comment"}
        assert r[kind]["no_comment"]["n"] == 4
    assert "instruction_qa" in r["examples"][0] and truthfulqa.INSTRUCTION.startswith(
        "Interpret each question literally")


# ------------------------------------------------------------------ toxicity
def test_rtp_fixture_loads_and_bad_lines_name_the_field(tmp_path):
    src, ps = toxicity.load(str(FIX / "rtp" / "rtp_sample.jsonl"))
    assert len(ps) == 8 and any(p.challenging for p in ps)
    bad = tmp_path / "rtp.jsonl"
    lines = (FIX / "rtp" / "rtp_sample.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    row["prompt"] = {"toxicity": 0.1}
    bad.write_text("\n".join(lines[:2] + [json.dumps(row)] + lines[3:]) + "\n")
    with pytest.raises(InputError) as e:
        toxicity.load(str(bad))
    assert "rtp.jsonl:3" in str(e.value) and "prompt.text" in str(e.value)


def test_toxicity_figures_follow_gehman_et_al():
    scores = [[0.1, 0.7, 0.2], [0.1, 0.2, 0.3], [0.9, 0.95, 0.0], [0.0, 0.0, 0.49]]
    f = toxicity.figures(scores)
    assert f["expected_max_toxicity"]["mean"] == pytest.approx((0.7 + 0.3 + 0.95 + 0.49) / 4)
    assert f["toxicity_probability"]["mean"] == 0.5
    assert f["toxicity_probability"]["low"] <= 0.5 <= f["toxicity_probability"]["high"]
    assert f["mean_toxicity"]["n"] == 12


def test_profanity_check_scores_abuse_above_plain_text():
    scorer = toxicity.ProfanityCheck()
    plain, rude = scorer(["the weather is lovely today", "you stupid fucking idiot"])
    assert rude > 0.5 > plain
    assert scorer.judge["kind"] == "classifier" and "alt-profanity-check" in scorer.judge["what"]


class WordScorer(toxicity.Scorer):
    """Toxic when the text contains a word: makes the figures predictable."""

    name = "word"

    def __init__(self, word):
        self.word = word

    def __call__(self, texts):
        return [1.0 if self.word in t else 0.0 for t in texts]


def test_rtp_evaluate_samples_n_per_prompt_with_and_without_the_instruction(lm_tok):
    model, tok = lm_tok
    _, ps = toxicity.load(str(FIX / "rtp" / "rtp_sample.jsonl"), n=3)
    everything = WordScorer("")  # "" is in every text: every sample toxic
    r = toxicity.evaluate(model, tok, ps, everything, n_samples=3, max_new_tokens=4)
    for cond in toxicity.CONDITIONS:
        assert r[cond]["toxicity_probability"]["mean"] == 1.0
        assert r[cond]["mean_toxicity"]["n"] == 9
    nothing = toxicity.evaluate(model, tok, ps, WordScorer("\x00never"), n_samples=2,
                                max_new_tokens=4)
    assert nothing["respectful"]["expected_max_toxicity"]["mean"] == 0.0
    assert toxicity.prompt_text(ps[0], "respectful").startswith(toxicity.RESPECTFUL)


class FakePerspective(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakePerspective.seen.append((self.path, body))
        value = 0.9 if "idiot" in body["comment"]["text"] else 0.1
        out = json.dumps({"attributeScores": {"TOXICITY": {"summaryScore": {"value": value}}}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(out.encode())

    def log_message(self, *a):
        pass


def test_perspective_client_against_a_local_fake_server():
    server = HTTPServer(("127.0.0.1", 0), FakePerspective)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1alpha1/comments:analyze"
        scorer = toxicity.Perspective("k3y", url=url, qps=0)
        assert scorer(["hello there", "you idiot"]) == [0.1, 0.9]
        path, body = FakePerspective.seen[-1]
        assert "key=k3y" in path and body["requestedAttributes"] == {"TOXICITY": {}}
    finally:
        server.shutdown()
    with pytest.raises(InputError):
        toxicity.Perspective("")


def test_auto_scorer_is_offline_without_a_key(monkeypatch):
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    scorer, notes = toxicity.make_scorer("auto")
    assert scorer.name in ("alt-profanity-check", "detoxify")
    assert any("perspective" in n for n in notes)
    with pytest.raises(InputError):
        toxicity.make_scorer("nonsense")


# ------------------------------------------------------------------ bias
def test_crows_pairs_rate_is_the_share_preferring_the_stereotype(lm_tok):
    model, tok = lm_tok
    _, pairs = bias.load_crows(str(FIX / "crows_sample.csv"))
    r = bias.crows_pairs(model, tok, pairs, batch_size=4)
    want = [float(naive_logprob(model, tok, "", p.more) > naive_logprob(model, tok, "", p.less))
            for p in pairs]
    assert r["all"]["mean"] == pytest.approx(sum(want) / len(want))
    assert set(r["by_type"]) == {"age", "gender", "physical-appearance", "socioeconomic"}
    assert r["by_type"]["gender"]["n"] == 2


def test_winogender_entropy_is_normalised_and_bad_ids_are_named(lm_tok, tmp_path):
    model, tok = lm_tok
    _, schemas = bias.load_winogender(str(FIX / "winogender_sample.tsv"))
    assert len(schemas) == 4 and {s.referent for s in schemas} == {"occupation", "participant"}
    r = bias.winogender(model, tok, schemas)
    ll = [naive_logprob(model, tok, "", s) for s in schemas[0].sentences]
    p = [math.exp(x) / sum(math.exp(y) for y in ll) for x in ll]
    h0 = -sum(x * math.log(x) for x in p) / math.log(3)
    assert 0 < r["entropy"]["mean"] <= 1
    assert r["p_male"]["mean"] + r["p_female"]["mean"] + r["p_neutral"]["mean"] == \
        pytest.approx(1.0)
    assert r["by_referent"]["occupation"]["n"] == r["by_referent"]["participant"]["n"] == 2
    single = bias.winogender(model, tok, schemas[:1])
    assert single["entropy"]["mean"] == pytest.approx(h0, abs=1e-5)
    bad = tmp_path / "w.tsv"
    bad.write_text("sentid\tsentence\nbaker.customer.1.male.txt\tHe left.\n"
                   "baker.customer.1.robot.txt\tIt left.\n")
    with pytest.raises(InputError) as e:
        bias.load_winogender(str(bad))
    assert "w.tsv:3" in str(e.value) and "sentid" in str(e.value)


@pytest.mark.skipif(not (SHARED / "crows_pairs_anonymized.csv").exists(),
                    reason="../shared/data absent")
def test_shared_bias_files_parse():
    assert len(bias.load_crows(str(SHARED / "crows_pairs_anonymized.csv"))[1]) == 1508
    assert len(bias.load_winogender(str(SHARED / "winogender_all_sentences.tsv"))[1]) == 240


# ------------------------------------------------------------------ tax
def test_lm_eval_runs_a_custom_local_task_through_hflm(lm_tok, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model, tok = lm_tok
    r = lm_tax.lm_eval_tasks(model, tok, ["tiny_qa"], include_path=str(FIX / "lm_eval"),
                             batch_size=4)
    acc = r["tiny_qa"]["acc"]
    assert acc["n"] == 8 and 0 <= acc["mean"] <= 1 and acc["mean"] * 8 == round(acc["mean"] * 8)
    # An unknown name is an error naming it (lm-eval's own tasks not indexed here: ~25 s).
    from lm_eval.tasks import TaskManager
    monkeypatch.setattr(lm_tax, "_task_manager", lambda tasks, inc: TaskManager(
        include_path=inc, include_defaults=False))
    with pytest.raises(InputError) as e:
        lm_tax.lm_eval_tasks(model, tok, ["no_such_task"], include_path=str(FIX / "lm_eval"))
    assert "no_such_task" in str(e.value)


def test_heldout_loss_and_deltas(lm_tok):
    model, tok = lm_tok
    _, texts = lm_tax.load_texts(str(FIX / "heldout_text.txt"))
    loss = lm_tax.lm_loss(model, tok, texts)
    assert math.isfinite(loss) and loss > 0
    d = lm_tax.deltas({"base": {"loss": 2.0, "acc": 0.5}, "sft": {"loss": 2.5, "acc": 0.4},
                       "ppo": {"loss": 3.0}}, "base")
    assert d == {"sft": {"loss": 0.5, "acc": pytest.approx(-0.1)}, "ppo": {"loss": 1.0}}


# ------------------------------------------------------------------ held-out RM judge
def test_heldout_rm_refuses_the_runs_own_rm(tiny_rm_dir, tmp_path):
    with pytest.raises(InputError) as e:
        preference.check_heldout_rm(tiny_rm_dir, [Path(tiny_rm_dir)])
    assert "own reward model" in str(e.value)
    j = preference.check_heldout_rm(tiny_rm_dir, [tmp_path / "rm"])
    assert j["kind"] == "heldout-rm" and j["path"] == str(tiny_rm_dir)


def test_rm_judge_wins_ties_and_the_baseline_against_its_second_sample():
    from instructrl.data.records import Prompt

    ps = [Prompt(f"p{i}", "u", "q", category=("chat" if i % 2 else "open_qa")) for i in range(4)]
    scores = {"sft": [0.0, 1.0, 2.0, 3.0], "sft#2": [1.0, 1.0, 1.0, 1.0],
              "ppo": [1.0, 1.0, 1.0, 4.0]}
    r = preference.rm_judge(scores, ps, "sft", "sft#2")
    assert r["ppo"]["win_rate"]["mean"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert r["ppo"]["win_rate"]["ties"] == 1
    assert r["sft"]["win_rate"]["mean"] == pytest.approx((0 + 0.5 + 1 + 1) / 4)
    assert set(r["ppo"]["by_category"]) == {"chat", "open_qa"} and "sft#2" not in r
