"""PPO's speed paths (issue 18) give what the plain paths give.

Each switch of `PPOConfig` (sampler log-probs, scoring chunk size, fused AdamW, static KV cache,
compiled decode step) and each always-on shortcut (response-only logits, chunked selective
log-softmax, entropy without gradients, multi-tensor EMA) is checked against the slower
computation it replaces, on tiny models. Speed itself is printed by bench/ppo_throughput.py,
never asserted here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from instructrl import losses
from instructrl.config import load_config
from instructrl.distributed import precision
from instructrl.errors import InputError
from instructrl.modeling import AdapterDisabled, add_lora, load_causal_lm, load_tokenizer
from instructrl.rollout import (_forward_params, check_fused, draw_cdf, output_layer, pad_left,
                                response_logprobs, sample, trim_padding)
from instructrl.rundir import RunDir
from instructrl.stages import ppo
from instructrl.stages.common import read_metrics
from instructrl.templates import encode_prompt
from conftest import ScaledLogits

LORA = ("lora.r=4", "lora.alpha=8", "lora.dropout=0.0")



def same_iteration(a: tuple[dict, dict], b: tuple[dict, dict], parts: tuple[str, ...]) -> None:
    """Two runs' (checkpoint, first metrics row) agree: the weights of `parts` and every
    metric but the timings."""
    (state_a, row_a), (state_b, row_b) = a, b
    for part in parts:
        assert state_a[part].keys() == state_b[part].keys()
        for k in state_a[part]:
            torch.testing.assert_close(state_a[part][k], state_b[part][k], atol=1e-5, rtol=0,
                                       msg=f"{part}.{k}")
    for k, v in row_a.items():
        if not k.startswith("time/"):
            assert v == pytest.approx(row_b[k], abs=1e-4, rel=1e-4), k

def queries(tok, n=8):
    texts = ["what does the zorp eat", "where is the blip", "the red fish lives in caves",
             "is a zorp blue", "yes", "what lives in caves the zorp or the blip", "no no",
             "the blip eats"]
    return pad_left([encode_prompt(tok, texts[i % len(texts)], 32) for i in range(n)],
                    tok.pad_token_id)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_causal_lm(tiny_model_dir).eval(), load_tokenizer(tiny_model_dir)


# --------------------------------------------------------------------------- the sampler
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_are_a_forward_passes_logprobs(tiny, temperature):
    model, tok = tiny
    q, qm = queries(tok)
    kw = dict(max_new_tokens=10, temperature=temperature, eos_token_id=tok.eos_token_id,
              pad_token_id=tok.pad_token_id)
    r, m, lp = sample(model, q, qm, generator=torch.Generator().manual_seed(0),
                      return_logprobs=True, **kw)
    r0, m0 = sample(model, q, qm, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(r, r0) and torch.equal(m, m0)  # asking for log-probs changes no draw
    lengths = m.sum(1)
    assert len(set(lengths.tolist())) > 1  # ragged: some rows ended with EOS
    with torch.no_grad():
        want = response_logprobs(model, q, qm, r, m, temperature)
    torch.testing.assert_close(lp, want, atol=1e-5, rtol=0)
    assert bool((lp[m == 0] == 0).all()) and bool((lp[m == 1] < 0).all())


def test_cdf_draw_samples_the_distribution():
    # 200k draws from three distributions at once: frequencies within 4 standard errors of
    # the probabilities, and a zero-probability token never drawn.
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2], [0.0, 0.0, 0.0, 1.0], [0.25] * 4])
    n = 200_000
    g = torch.Generator().manual_seed(0)
    toks = draw_cdf(probs.repeat(n, 1), g).view(n, 3)
    for row in range(3):
        freq = torch.bincount(toks[:, row], minlength=4).double() / n
        p = probs[row].double()
        se = (p * (1 - p) / n).sqrt()
        assert bool(((freq - p).abs() <= 4 * se + 1e-12).all()), (row, freq, p)
        assert bool((freq[p == 0] == 0).all())


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_cdf_draw_in_the_sampler_keeps_its_contract(tiny, cache):
    model, tok = tiny
    q, qm = queries(tok)
    kw = dict(max_new_tokens=10, temperature=0.9, eos_token_id=tok.eos_token_id,
              pad_token_id=tok.pad_token_id, return_logprobs=True, draw="cdf", cache=cache)
    r, m, lp = sample(model, q, qm, generator=torch.Generator().manual_seed(4), **kw)
    r2, m2, lp2 = sample(model, q, qm, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(r, r2) and torch.equal(lp, lp2)  # deterministic given the generator
    with torch.no_grad():
        torch.testing.assert_close(lp, response_logprobs(model, q, qm, r, m, 0.9), atol=1e-5,
                                   rtol=0)
    assert len(set(m.sum(1).tolist())) > 1 and bool((r[m == 0] == tok.pad_token_id).all())


def test_sampler_refuses_greedy_logprobs_and_compile_without_static_cache(tiny):
    model, tok = tiny
    q, qm = queries(tok, 2)
    kw = dict(max_new_tokens=2, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with pytest.raises(ValueError, match="greedy"):
        sample(model, q, qm, temperature=0, return_logprobs=True, **kw)
    with pytest.raises(ValueError, match="static"):
        sample(model, q, qm, compile_step=True, **kw)


def test_static_cache_draws_the_same_tokens_as_the_dynamic_cache(tiny):
    model, tok = tiny
    q, qm = queries(tok)
    kw = dict(max_new_tokens=12, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
              return_logprobs=True)
    dyn = sample(model, q, qm, generator=torch.Generator().manual_seed(5), **kw)
    sta = sample(model, q, qm, generator=torch.Generator().manual_seed(5), cache="static", **kw)
    assert torch.equal(dyn[0], sta[0]) and torch.equal(dyn[1], sta[1])
    torch.testing.assert_close(sta[2], dyn[2], atol=1e-5, rtol=0)
    # Greedy as well (no RNG in the way): the same sequence token for token.
    g_dyn = sample(model, q, qm, temperature=0, max_new_tokens=12,
                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    g_sta = sample(model, q, qm, temperature=0, max_new_tokens=12, cache="static",
                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert torch.equal(g_dyn[0], g_sta[0])


def test_compiled_decode_step_draws_the_same_tokens(tiny):
    # torch.compile on this CPU (inductor, C++): the first call compiles (tens of seconds).
    model, tok = tiny
    q, qm = queries(tok, 4)
    kw = dict(max_new_tokens=6, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
              return_logprobs=True)
    dyn = sample(model, q, qm, generator=torch.Generator().manual_seed(2), **kw)
    comp = sample(model, q, qm, generator=torch.Generator().manual_seed(2), cache="static",
                  compile_step=True, **kw)
    assert torch.equal(dyn[0], comp[0]) and torch.equal(dyn[1], comp[1])
    torch.testing.assert_close(comp[2], dyn[2], atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- log-probs
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_selective_log_softmax_equals_log_softmax_chunked_or_not(dtype, temperature,
                                                                  monkeypatch):
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 7, 50)).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, 50, (3, 7))
    w = torch.randn(3, 7)
    full = F.log_softmax(logits.float() / temperature, -1)  # the old path: (B,R,V) kept
    want = full.gather(-1, tokens[..., None]).squeeze(-1)
    want_ent = -(full.exp() * full).sum(-1)
    (want_grad,) = torch.autograd.grad((want * w).sum(), logits)
    for rows in (10_000, 4, 1):  # one chunk, ragged chunks, a chunk per position
        monkeypatch.setattr(losses, "_chunk_rows", lambda V, rows=rows: rows)
        lp, ent = losses.selective_log_softmax(logits, tokens, temperature, with_entropy=True)
        assert lp.dtype == ent.dtype == torch.float32 and not ent.requires_grad
        torch.testing.assert_close(lp, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(ent, want_ent, atol=1e-5, rtol=0)
        (grad,) = torch.autograd.grad((lp * w).sum(), logits)
        assert grad.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(grad.float(), want_grad.float(), atol=tol, rtol=0)


def test_selective_log_softmax_saves_no_float_copy_for_backward():
    # What autograd keeps between forward and backward: the input logits and one float per
    # position, not a (..., V) float32 tensor (the old path kept log_softmax's output).
    logits = torch.randn(2, 5, 300, dtype=torch.bfloat16, requires_grad=True)
    tokens = torch.randint(0, 300, (2, 5))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        losses.selective_log_softmax(logits, tokens)
    big = [t for t in saved if t.numel() >= logits.numel()]
    assert len(big) == 1 and big[0].dtype == torch.bfloat16
    assert sum(t.numel() for t in saved if t.numel() < logits.numel()) <= 2 * 2 * 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_linear_log_softmax_equals_the_output_layer_then_log_softmax(dtype, temperature,
                                                                     monkeypatch):
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16).to(dtype).requires_grad_(True)
    weight = torch.randn(50, 16).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, 50, (3, 7))
    w = torch.randn(3, 7)
    want, want_ent = losses.selective_log_softmax(hidden @ weight.t(), tokens, temperature,
                                                  with_entropy=True)
    want_grads = torch.autograd.grad((want * w).sum(), (hidden, weight))
    for rows in (10_000, 4, 1):  # one chunk, ragged chunks, a chunk per position
        monkeypatch.setattr(losses, "_chunk_rows", lambda V, rows=rows: rows)
        lp, ent = losses.linear_log_softmax(hidden, weight, tokens, temperature,
                                            with_entropy=True)
        assert lp.dtype == ent.dtype == torch.float32 and not ent.requires_grad
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(lp, want, atol=tol, rtol=0)
        torch.testing.assert_close(ent, want_ent, atol=tol, rtol=0)
        grads = torch.autograd.grad((lp * w).sum(), (hidden, weight))
        for g, want_g in zip(grads, want_grads):
            assert g.dtype == dtype
            torch.testing.assert_close(g.float(), want_g.float(), atol=tol * 5, rtol=tol)
    with pytest.raises(ValueError, match="disagree"):
        losses.linear_log_softmax(hidden, weight[:, :8], tokens)


def test_linear_log_softmax_keeps_no_logits_for_backward():
    # Saved between the passes: the hidden states, the weight and one float per position;
    # nothing of the (positions x vocabulary) logits.
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(300, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        losses.linear_log_softmax(hidden, weight, torch.randint(0, 300, (2, 5)))
    assert max(t.numel() for t in saved) == weight.numel() < 2 * 5 * 300


def test_fused_response_logprobs_equal_the_logits_path(tiny, tiny_model_dir, make_cfg):
    # Log-probs, entropies and every trained parameter's gradient: the plain model (tied or
    # not), a LoRA policy and its adapter-disabled reference view (nothing trained).
    model, tok = tiny
    q, qm = queries(tok)
    r, m = sample(model, q, qm, max_new_tokens=9, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(1))
    untied = load_causal_lm(tiny_model_dir).eval()
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone() * 1.5)
    lora = add_lora(load_causal_lm(tiny_model_dir), make_cfg(*LORA).lora, dropout=0.0).eval()
    for net in (model, untied, lora, AdapterDisabled(lora)):
        params = [p for p in net.parameters() if p.requires_grad]
        got = {}
        for fused in (False, True):
            lp, ent = response_logprobs(net, q, qm, r, m, 0.8, return_entropy=True,
                                        fused=fused)
            got[fused] = (lp, ent, torch.autograd.grad((lp * lp.detach()).sum(), params,
                                                       allow_unused=True) if params else ())
            assert not ent.requires_grad
        for a, b in zip(got[False][:2], got[True][:2]):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        for a, b in zip(got[False][2], got[True][2]):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
        head = (net.model if isinstance(net, AdapterDisabled) else net).get_output_embeddings()
        assert "forward" not in vars(head)  # the output layer is itself again


def test_fused_logprobs_under_bf16_autocast_compute_as_the_output_layer_does(tiny):
    # Under autocast the output layer's matmul runs in bf16; the fused one too (in both
    # passes), so the two paths agree as closely as bf16 logits allow, and check_fused's
    # half-precision tolerance (5e-2) holds.
    model, tok = tiny
    q, qm = queries(tok, 4)
    r, m = sample(model, q, qm, max_new_tokens=6, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(3))
    got = {}
    for fused in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp = response_logprobs(model, q, qm, r, m, 1.0, fused=fused)
        assert lp.dtype == torch.float32
        head = model.get_output_embeddings().weight
        got[fused] = (lp, torch.autograd.grad(lp.sum(), head)[0])
    torch.testing.assert_close(got[True][0], got[False][0], atol=5e-2, rtol=0)
    torch.testing.assert_close(got[True][1], got[False][1], atol=5e-2, rtol=5e-2)


def test_fused_logprobs_refuse_what_they_cannot_stand_in_for(tiny, tiny_model_dir, make_cfg):
    model, tok = tiny
    q, qm = queries(tok, 4)
    r, m = sample(model, q, qm, max_new_tokens=5, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(2))
    check_fused(model, q, qm, r, m, 0.8)  # a plain Llama: agrees
    with pytest.raises(ValueError, match="ppo.fused_logprobs false"):
        check_fused(ScaledLogits(model), q, qm, r, m, 0.8)
    cfg = make_cfg(*LORA, "lora.target_modules=[q_proj,lm_head]")
    lora_head = add_lora(load_causal_lm(tiny_model_dir), cfg.lora, dropout=0.0)
    with pytest.raises(ValueError, match="plain bias-free nn.Linear"):
        output_layer(lora_head)
    wrapped = load_causal_lm(tiny_model_dir)  # a forward of its own already (device-map hooks)
    wrapped.lm_head.forward = wrapped.lm_head.forward
    with pytest.raises(ValueError, match="or wrapped"):
        output_layer(wrapped)


class NoLogitsToKeep(torch.nn.Module):
    """The same model seen through a forward without `logits_to_keep` (older architectures):
    response_logprobs must fall back to slicing the full logits."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, input_ids, attention_mask, position_ids, use_cache):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids, use_cache=use_cache)


def test_response_only_logits_equal_full_logits_with_and_without_grad(tiny):
    model, tok = tiny
    q, qm = queries(tok)
    r, m = sample(model, q, qm, max_new_tokens=9, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(1))
    assert "logits_to_keep" in _forward_params(model)
    assert "logits_to_keep" not in _forward_params(NoLogitsToKeep(model))
    lp, ent = response_logprobs(model, q, qm, r, m, 0.8, return_entropy=True)
    lp_full, ent_full = response_logprobs(NoLogitsToKeep(model), q, qm, r, m, 0.8,
                                          return_entropy=True)
    torch.testing.assert_close(lp, lp_full, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ent_full, atol=1e-5, rtol=0)
    # Gradients through the response-only logits are those through the full logits.
    params = [p for p in model.parameters()]
    g1 = torch.autograd.grad(lp.sum(), params, allow_unused=True)
    g2 = torch.autograd.grad(lp_full.sum(), params, allow_unused=True)
    for a, b in zip(g1, g2):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert not ent.requires_grad  # entropy is a statistic: no graph kept for it


def test_lora_reference_view_also_gets_response_only_logits(tiny_model_dir, make_cfg):
    cfg = make_cfg(*LORA)
    policy = add_lora(load_causal_lm(tiny_model_dir), cfg.lora, dropout=0.0).eval()
    assert "logits_to_keep" in _forward_params(policy)
    assert "logits_to_keep" in _forward_params(AdapterDisabled(policy))


# --------------------------------------------------------------------------- the stage
def test_rollout_logprobs_from_the_sampler_equal_the_scoring_forward(tiny_run, make_cfg,
                                                                    tiny_model_dir,
                                                                    tiny_rm_dir):
    prompts = RunDir(tiny_run).prompts("train")[:16]
    got = {}
    for on in (True, False):
        cfg = make_cfg(f"ppo.logprobs_from_sampler={str(on).lower()}", "ppo.score_batch_size=5")
        m = ppo.load_models(cfg, tiny_model_dir, tiny_model_dir, tiny_rm_dir, tiny_rm_dir,
                            torch.device("cpu"))
        got[on] = ppo.make_rollout(m, load_tokenizer(tiny_model_dir), prompts, cfg.ppo, seed=3,
                                   device=torch.device("cpu"))
    a, b = got[True], got[False]
    assert torch.equal(a.responses, b.responses) and torch.equal(a.response_mask, b.response_mask)
    assert len(set(a.response_mask.sum(1).tolist())) > 1
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
    for f in ("ref_logprobs", "values", "scores"):
        torch.testing.assert_close(getattr(a, f), getattr(b, f), atol=1e-6, rtol=0)
    # At the start the reference is the policy: their log-probs agree to rounding too.
    torch.testing.assert_close(a.ref_logprobs, a.logprobs, atol=1e-5, rtol=0)


def test_scoring_chunk_size_does_not_change_the_rollout(tiny_run, make_cfg, tiny_model_dir,
                                                        tiny_rm_dir):
    prompts = RunDir(tiny_run).prompts("train")[:16]
    got = []
    for size in (16, 3):
        cfg = make_cfg(f"ppo.score_batch_size={size}")
        m = ppo.load_models(cfg, tiny_model_dir, tiny_model_dir, tiny_rm_dir, tiny_rm_dir,
                            torch.device("cpu"))
        got.append(ppo.make_rollout(m, load_tokenizer(tiny_model_dir), prompts, cfg.ppo,
                                    seed=0, device=torch.device("cpu")))
    for f in ("logprobs", "ref_logprobs", "values", "scores"):
        torch.testing.assert_close(getattr(got[0], f), getattr(got[1], f), atol=1e-6, rtol=0)


def test_fused_adamw_takes_the_steps_of_adamw(tiny_model_dir, make_cfg):
    models = {}
    for fused in (True, False):
        cfg = make_cfg(f"ppo.fused_adamw={str(fused).lower()}")
        torch.manual_seed(0)
        model = load_causal_lm(tiny_model_dir, trained=True)
        opt = ppo._adamw(list(model.parameters()), cfg.ppo)
        assert bool(opt.param_groups[0]["fused"]) == fused
        ids = torch.randint(3, 300, (4, 12))
        for _ in range(3):
            opt.zero_grad()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
        models[fused] = dict(model.named_parameters())
    for k, v in models[True].items():
        torch.testing.assert_close(v, models[False][k], atol=1e-6, rtol=0)


def test_ema_update_equals_a_per_tensor_lerp(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, trained=True)
    ema = ppo.EMA(model, 0.9)
    start = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ema.update(model)
    for k, p in model.named_parameters():
        torch.testing.assert_close(ema.shadow[k], start[k] + 0.1 * (p.detach() - start[k]),
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("lora", [False, True])
def test_an_iteration_with_every_speed_switch_equals_the_plain_one(
        tiny_run, make_cfg, tiny_model_dir, tiny_rm_dir, lora):
    # Same seed, one iteration: with the speed paths (sampler log-probs, big scoring chunks,
    # fused AdamW, static cache, log-probs fused with the output layer) and without them (a second policy forward, micro-sized
    # scoring chunks, foreach AdamW, dynamic cache) the trained weights and every metric
    # agree to float rounding. With LoRA the reference is the adapter-disabled view. (Both
    # draw tokens the same way, `ppo.sampler_draw`, so that they sample the same responses.)
    fast = ("ppo.logprobs_from_sampler=true", "ppo.score_batch_size=16",
            "ppo.fused_adamw=true", "ppo.sampler_cache=static", "ppo.fused_logprobs=true")
    slow = ("ppo.logprobs_from_sampler=false", "ppo.score_batch_size=4",
            "ppo.fused_adamw=false", "ppo.sampler_cache=dynamic")
    out = {}
    for name, switches in (("fast", fast), ("slow", slow)):
        cfg = make_cfg("ppo.episodes=32", "ppo.batch_size=16", *switches,
                       *(LORA if lora else ()))
        d = ppo.train(cfg, RunDir(tiny_run), init=tiny_model_dir, ref=tiny_model_dir,
                      rm=tiny_rm_dir, value=tiny_rm_dir, stage=f"ppo-{name}",
                      max_iterations=1)
        out[name] = (torch.load(d / "checkpoint" / "state.pt", weights_only=False),
                     read_metrics(d / "metrics.jsonl")[0])
    assert "loss/ptx" in out["fast"][1]  # the ptx loss too, fused with the output layer
    same_iteration(out["fast"], out["slow"], ("policy", "value", "ema"))
    for k in ("time/generation", "time/scoring", "time/training"):
        assert out["fast"][1][k] >= 0 and out["slow"][1][k] >= 0


def test_speed_switches_are_validated():
    with pytest.raises(InputError, match="ppo.compile_sampler"):
        load_config(None, ["ppo.compile_sampler=true"])
    with pytest.raises(InputError, match="ppo.sampler_cache"):
        load_config(None, ["ppo.sampler_cache=paged"])
    with pytest.raises(InputError, match="ppo.score_batch_size"):
        load_config(None, ["ppo.score_batch_size=0"])
    with pytest.raises(InputError, match="ppo.sampler_draw"):
        load_config(None, ["ppo.sampler_draw=gumbel"])
    cfg = load_config(None, ["ppo.sampler_cache=static", "ppo.compile_sampler=true"])
    assert cfg.ppo.compile_sampler and cfg.ppo.logprobs_from_sampler and cfg.ppo.fused_adamw


def test_trim_padding_keeps_one_column_for_empty_batches():
    # (a guard the response-only logits rely on: r >= 1 keeps logits[:, -(r+1):-1] non-empty)
    q, qm = torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
    r, rm = torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)
    assert trim_padding(q, qm, r, rm)[2].shape[1] == 1


def test_static_cache_is_reused_and_reset_between_calls(tiny):
    # The second call with the same model and shape reuses the first call's cache tensors
    # (same addresses: what a CUDA graph needs), reset, and draws what a fresh cache draws.
    import instructrl.rollout as rollout

    model, tok = tiny
    q, qm = queries(tok, 4)
    kw = dict(max_new_tokens=5, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
              cache="static", return_logprobs=True)
    a = sample(model, q, qm, generator=torch.Generator().manual_seed(9), **kw)
    cache = rollout._last_static_cache[2]
    ptr = cache.layers[0].keys.data_ptr()
    b = sample(model, q, qm, generator=torch.Generator().manual_seed(9), **kw)
    assert rollout._last_static_cache[2] is cache and cache.layers[0].keys.data_ptr() == ptr
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    sample(model, q[:2], qm[:2], generator=torch.Generator().manual_seed(9), **kw)
    assert rollout._last_static_cache[2] is not cache  # another shape: a new cache


def test_bf16_autocast_runs_and_keeps_float32_logprobs(tiny_run, make_cfg, tiny_model_dir,
                                                       tiny_rm_dir):
    # The GPU default (bf16 autocast over float32 master weights), exercised on the CPU: bf16
    # logits through the sampler, scoring and the selective log-softmax. bf16 draws other
    # tokens than float32, so the check is on one rollout: at the start the sampler's
    # log-probs and the reference's (the same weights) agree to bf16 rounding, in float32.
    cfg = make_cfg("ppo.episodes=32", "ppo.batch_size=16", "model.mixed_precision=bf16")
    m = ppo.load_models(cfg, tiny_model_dir, tiny_model_dir, tiny_rm_dir, tiny_rm_dir,
                        torch.device("cpu"))
    with precision(cfg.model, torch.device("cpu")).autocast():
        r = ppo.make_rollout(m, load_tokenizer(tiny_model_dir), RunDir(tiny_run).prompts(
            "train")[:16], cfg.ppo, seed=0, device=torch.device("cpu"))
    assert r.logprobs.dtype == r.ref_logprobs.dtype == torch.float32
    mask = r.response_mask.bool()
    err = (r.logprobs - r.ref_logprobs)[mask].abs()
    assert float(err.max()) < 0.1 and float(err.max()) > 0  # bf16: close, not equal
    d = ppo.train(cfg, RunDir(tiny_run), init=tiny_model_dir, ref=tiny_model_dir,
                  rm=tiny_rm_dir, value=tiny_rm_dir, stage="ppo-bf16", max_iterations=1)
    row = read_metrics(d / "metrics.jsonl")[0]
    assert all(math.isfinite(v) for v in row.values())


@pytest.mark.parametrize("lora", [False, True])
def test_parallel_scoring_trains_as_the_sequential_path(tiny_run, make_cfg, tiny_model_dir,
                                                        tiny_rm_dir, lora):
    # ppo.parallel_scoring scores the halves of each scoring chunk on two threads: the same
    # iteration, to rounding.
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the parallel path needs 2+ threads (tests run with 1)
    seen = []
    real = ppo._run_parts
    ppo_run_parts = lambda parts, parallel: (seen.append(parallel), real(parts, parallel))[1]
    ppo._run_parts = ppo_run_parts
    try:
        for par in ("true", "false"):
            cfg = make_cfg("ppo.episodes=32", "ppo.batch_size=16",
                           f"ppo.parallel_scoring={par}", *(LORA if lora else ()))
            d = ppo.train(cfg, RunDir(tiny_run), init=tiny_model_dir, ref=tiny_model_dir,
                          rm=tiny_rm_dir, value=tiny_rm_dir, stage=f"ppo-par-{par}",
                          max_iterations=1)
            out[par] = (torch.load(d / "checkpoint" / "state.pt", weights_only=False),
                        read_metrics(d / "metrics.jsonl")[0])
            assert torch.get_num_threads() == 2  # restored after the parallel parts
    finally:
        ppo._run_parts = real
        torch.set_num_threads(threads)
    assert True in seen  # the parallel path did run
    same_iteration(out["true"], out["false"], ("policy", "value"))


def test_offload_frozen_moves_the_frozen_copies_out_between_scorings(
        tiny_run, make_cfg, tiny_model_dir, tiny_rm_dir, monkeypatch):
    # On this CPU-only machine both places are the CPU, so the test follows the calls: the
    # frozen copies go to CPU memory (a "cpu" string) at the start and after every scoring,
    # and to the training device (a torch.device) just before it; views move nothing.
    cfg = make_cfg("ppo.episodes=32", "ppo.batch_size=16", "ppo.offload_frozen=true")
    events: list[tuple[str, str]] = []
    real_load, real_score = ppo.load_models, ppo.score

    def load(*args, **kwargs):
        m = real_load(*args, **kwargs)
        assert ppo.frozen_copies(m) == [m.ref, m.rm]
        for name in ("ref", "rm"):
            module = getattr(m, name)

            def to(where, _name=name, _to=module.to):
                events.append((_name, "away" if where == "cpu" else "home"))
                return _to(where)
            module.to = to
        return m

    def score(*args, **kwargs):
        events.append(("score", ""))
        return real_score(*args, **kwargs)

    monkeypatch.setattr(ppo, "load_models", load)
    monkeypatch.setattr(ppo, "score", score)
    d = ppo.train(cfg, RunDir(tiny_run), init=tiny_model_dir, ref=tiny_model_dir,
                  rm=tiny_rm_dir, value=tiny_rm_dir, stage="ppo-offload")
    one = [("ref", "home"), ("rm", "home"), ("score", ""), ("ref", "away"), ("rm", "away")]
    assert events == [("ref", "away"), ("rm", "away")] + one * 2
    monkeypatch.undo()
    plain = ppo.train(make_cfg("ppo.episodes=32", "ppo.batch_size=16"), RunDir(tiny_run),
                      init=tiny_model_dir, ref=tiny_model_dir, rm=tiny_rm_dir,
                      value=tiny_rm_dir, stage="ppo-plain")

    def untimed(path):
        return [{k: v for k, v in r.items() if not k.startswith("time/")}
                for r in read_metrics(path / "metrics.jsonl")]
    assert untimed(d) == untimed(plain)
    # With LoRA the reference and the RM are views of the trained models: nothing to move.
    lora = ppo.load_models(make_cfg("lora.r=4"), tiny_model_dir, tiny_model_dir, tiny_rm_dir,
                           tiny_rm_dir, torch.device("cpu"))
    assert ppo.frozen_copies(lora) == []
