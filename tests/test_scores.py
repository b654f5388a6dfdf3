"""Pruning parameters: Taylor-score EMAs, their bias correction, the BN-|γ| ablation."""

from __future__ import annotations

import pytest
import torch

from taperprune.scores import bn_gamma_scores, corrected_scores, update_scores


def test_update_scores_is_ema_of_squared_gradient():
    ema = torch.tensor([0.0, 1.0, 2.0, 0.5], dtype=torch.float64)
    g = torch.tensor([1.0, -2.0, 0.0, 3.0], dtype=torch.float32)
    out = update_scores(ema, g, 0.9)
    want = 0.9 * ema + 0.1 * g.double() ** 2
    assert out.dtype == torch.float64
    assert torch.allclose(out, want, rtol=0, atol=1e-15)
    # Inputs untouched, sign of the gradient irrelevant.
    assert torch.equal(ema, torch.tensor([0.0, 1.0, 2.0, 0.5], dtype=torch.float64))
    assert torch.equal(update_scores(ema, -g, 0.9), out)


def test_update_scores_detaches_and_moves_to_cpu_float64():
    g = torch.tensor([1.5, -0.5], requires_grad=True) * 2
    out = update_scores(torch.zeros(2, dtype=torch.float64), g, 0.5)
    assert not out.requires_grad
    assert out.device.type == "cpu"
    assert torch.allclose(out, torch.tensor([0.5 * 9.0, 0.5 * 1.0], dtype=torch.float64))


def test_update_scores_beta_zero_is_last_gradient():
    g = torch.tensor([2.0, -3.0])
    out = update_scores(torch.full((2,), 7.0, dtype=torch.float64), g, 0.0)
    assert torch.equal(out, torch.tensor([4.0, 9.0], dtype=torch.float64))


def test_many_steps_converge_to_mean_square():
    beta = 0.9
    ema = torch.zeros(3, dtype=torch.float64)
    grads = [torch.tensor([1.0, 2.0, -1.0]), torch.tensor([-1.0, 0.0, 3.0])]
    for k in range(400):
        ema = update_scores(ema, grads[k % 2], beta)
    mean_sq = (grads[0].double() ** 2 + grads[1].double() ** 2) / 2
    assert torch.allclose(ema, mean_sq, rtol=0.1)


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.99])
def test_corrected_scores_remove_start_bias(beta):
    g = torch.tensor([0.5, -1.0, 3.0])
    ema = torch.zeros(3, dtype=torch.float64)
    for steps in range(1, 6):
        ema = update_scores(ema, g, beta)
        # A constant gradient gives exactly g² once corrected, from the first step.
        assert torch.allclose(corrected_scores(ema, beta, steps), g.double() ** 2, rtol=1e-12)
        assert torch.allclose(corrected_scores(ema, beta, steps), ema / (1 - beta**steps))


def test_corrected_scores_zero_steps_is_a_copy():
    ema = torch.tensor([1.0, 2.0], dtype=torch.float64)
    out = corrected_scores(ema, 0.9, 0)
    assert torch.equal(out, ema)
    out[0] = 5.0
    assert ema[0] == 1.0


def test_bn_gamma_scores_sum_abs_gamma_per_unit():
    n = 3
    gamma_a = torch.tensor([0.5, -2.0, 1.0, -0.25])
    units_a = torch.tensor([0, 1, 2, n])  # last channel fixed: goes to the dropped slot
    gamma_b = torch.tensor([-1.0, 3.0], requires_grad=True)
    units_b = torch.tensor([2, 0])
    s = bn_gamma_scores([(gamma_a, units_a), (gamma_b, units_b)], n)
    assert s.dtype == torch.float64 and s.shape == (n,)
    assert torch.allclose(s, torch.tensor([0.5 + 3.0, 2.0, 1.0 + 1.0], dtype=torch.float64))
    assert not s.requires_grad


def test_bn_gamma_scores_empty_is_zero():
    assert torch.equal(bn_gamma_scores([], 4), torch.zeros(4, dtype=torch.float64))
