import pytest
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

from fsa_seg.models.plugins.base import attend
from fsa_seg.models.plugins.fsa_reference import official_new_attention


def build(**kwargs):
    return MODELS.build(dict(type='FSA', **kwargs))


def random_problem(batch=1, heads=3, n=10, dim=4, queries=5, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    attn = torch.rand(batch, heads, n, n, generator=generator, dtype=dtype).softmax(-1)
    values = torch.randn(batch, heads, n, dim, generator=generator, dtype=dtype)
    head = torch.randn(heads * dim, 6, generator=generator, dtype=dtype)
    text = F.normalize(torch.randn(queries, 6, generator=generator, dtype=dtype), dim=-1)

    def logits_fn(o):
        merged = o.transpose(1, 2).flatten(2)
        return F.normalize(merged @ head.to(o.dtype), dim=-1) @ text.to(o.dtype).t()

    return attn, values, logits_fn


def test_reproduces_the_official_implementation_on_the_golden_fixture(golden, golden_logits_fn):
    fsa = build(lamda=golden['lamda'], top_p=golden['top_p'], logit_scales=golden['logit_scales'])
    out = fsa(golden['attn'], golden['values'], golden_logits_fn)
    assert out.shape == golden['attended'].shape
    assert (out - golden['attended']).abs().max() < 1e-12


def test_precomputed_attended_values_give_the_same_result(golden, golden_logits_fn):
    fsa = build()
    attended = attend(golden['attn'], golden['values'])  # as FSA computes it when not given
    assert torch.equal(fsa(golden['attn'], golden['values'], golden_logits_fn, attended=attended),
                       fsa(golden['attn'], golden['values'], golden_logits_fn))


def test_identical_per_head_attention_equals_the_shared_form():
    attn, values, logits_fn = random_problem()
    shared = attn[:, :1]
    fsa = build()
    per_head = fsa(shared.expand_as(attn).contiguous(), values, logits_fn)
    assert torch.allclose(per_head, fsa(shared, values, logits_fn), atol=1e-12)


def test_identity_attention_reduces_to_the_new_attention_alone():
    _, values, logits_fn = random_problem()
    fsa = build()
    new_attn = official_new_attention(None, values, logits_fn, 3.0, 0.45, (20.0, 35.0))
    assert torch.allclose(fsa(None, values, logits_fn), new_attn @ values, atol=1e-12)
    # the same as the ensemble with an explicit identity matrix
    eye = torch.eye(values.shape[2], dtype=values.dtype)[None, None]
    assert torch.allclose(fsa(eye, values, logits_fn), new_attn @ values, atol=1e-12)


def test_ensemble_formula_against_explicit_matrices():
    attn, values, logits_fn = random_problem(heads=2)
    fsa = build(lamda=2.0, top_p=0.6)
    new_attn = official_new_attention(attn, values, logits_fn, 2.0, 0.6, (20.0, 35.0))
    assert torch.allclose(fsa.feedback_attention(attn @ values, values, logits_fn),
                          new_attn[:, :1], atol=1e-12)   # shared by the heads
    ensemble = (new_attn @ attn + attn @ new_attn + new_attn) / 3
    assert torch.allclose(fsa(attn, values, logits_fn), ensemble @ values, atol=1e-12)


def test_batch_of_two_equals_two_batches_of_one():
    attn, values, logits_fn = random_problem(batch=2)
    fsa = build()
    both = fsa(attn, values, logits_fn)
    for i in range(2):
        single = fsa(attn[i:i + 1], values[i:i + 1], logits_fn)
        assert torch.allclose(both[i:i + 1], single, atol=1e-12)


def test_patch_similarity_is_one_over_one_plus_kl():
    logits = torch.randn(1, 4, 3, dtype=torch.float64)
    q = logits.softmax(-1)[0]
    expected = torch.empty(4, 4, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            kl = (q[i] * (torch.log(q[i] + 1e-10) - torch.log(q[j] + 1e-10))).sum()
            expected[i, j] = 1 / (1 + kl.clamp_min(0))
    assert torch.allclose(build().patch_similarity(logits)[0], expected, atol=1e-14)


def test_pruning_keeps_the_top_mass_and_always_the_first_entry():
    sim = torch.tensor([[[0.9, 0.1, 0.5, 0.8]]], dtype=torch.float64)
    # softmax of the sorted row [0.9, 0.8, 0.5, 0.1]: cumulative mass 0.331, 0.630, 0.851, 1
    lamda = 3.0
    kept = build(lamda=lamda, top_p=0.45).prune_and_sharpen(sim)
    assert kept[0, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    kept = build(lamda=lamda, top_p=0.65).prune_and_sharpen(sim)
    weights = torch.tensor([0.9, 0.8], dtype=torch.float64)
    expected = (weights * torch.exp(lamda * weights)).softmax(-1)
    assert torch.allclose(kept[0, 0, [0, 3]], expected) and kept[0, 0, [1, 2]].sum() == 0


def test_top_p_zero_keeps_only_the_first_and_one_keeps_all():
    sim = torch.rand(2, 6, 6, dtype=torch.float64)
    only_first = build(top_p=0.0).prune_and_sharpen(sim)
    assert torch.equal(only_first, F.one_hot(sim.argmax(-1), 6).to(sim.dtype))
    everything = build(lamda=1.5, top_p=1.0 + 1e-9).prune_and_sharpen(sim)
    assert torch.allclose(everything, (sim * torch.exp(1.5 * sim)).softmax(-1))


def test_a_single_token_works():
    attn, values, logits_fn = random_problem(n=1)
    out = build()(attn, values, logits_fn)
    assert torch.allclose(out, values)  # one token: every attention is 1


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_finite_outputs_close_to_fp32(dtype):
    attn, values, logits_fn = random_problem(n=64, dtype=torch.float32)
    reference = build()(attn, values, logits_fn)
    out = build()(attn.to(dtype), values.to(dtype), logits_fn)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - reference).abs().max() < 0.1


def test_bad_logit_scales_are_rejected():
    with pytest.raises(ValueError, match='two values'):
        build(logit_scales=(20.0, ))


@pytest.mark.parametrize('launch, message', [
    (dict(rows=3), 'powers of two'), (dict(warps=64), 'at most 32 warps'),
    (dict(parts=1), 'parts ≥ 2'), (dict(rows=1.5), 'powers of two'),
    (dict(snap=-1), 'snap ≥ 0'), (dict(snap=2.5), 'snap ≥ 0'),
    (dict(threads=4), 'pruning_launch takes rows, warps, parts, snap; got threads')])
def test_bad_pruning_launches_are_rejected(launch, message):
    with pytest.raises(ValueError, match=message):
        build(pruning_launch=launch)


def test_a_pruning_launch_is_shown_only_when_it_is_not_the_default():
    assert 'pruning_launch' not in repr(build())
    assert "pruning_launch={'rows': 1, 'warps': 16, 'parts': 8, 'snap': 13}" in repr(
        build(pruning_launch=dict(warps=16, parts=8, rows=1)))
    assert "'snap': 0}" in repr(build(pruning_launch=dict(snap=0)))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
def test_half_precision_similarities_are_isolated_in_fp32(dtype):
    """s_a·P − s_u·P_u from fp16/bf16 similarities, to fp32's rounding (in fp16 the scaled
    similarities would be off by up to 0.03), as the fused kernel computes it."""
    generator = torch.Generator().manual_seed(2)
    both = (torch.rand(1, 131, 5, generator=generator) * 2 - 1).to(dtype)
    isolated = build()._isolation(both)
    exact = 20 * both[:, :-1].double() - 35 * both[:, -1:].double()
    assert isolated.dtype == torch.float32
    assert (isolated.double() - exact).abs().max() < 1e-5
