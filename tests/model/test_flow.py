"""Flow matching: time sampling, schedules, interpolation, Euler sampling and guidance."""

from __future__ import annotations

import json

import pytest
import torch

from emcot.model.flow import (
    FlowSamplerConfig,
    GuidedVelocity,
    combine_guidance,
    euler_sample,
    interpolate,
    sample_time,
    shift_time,
    time_schedule,
    velocity_target,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_schedule_endpoints_and_monotonic(shift):
    s = time_schedule(50, shift=shift)
    assert s.shape == (51,) and s.dtype == torch.float32
    assert s[0].item() == 1.0 and s[-1].item() == 0.0
    assert torch.all(s[1:] < s[:-1])


def test_schedule_shift_formula():
    plain = time_schedule(4).double()
    torch.testing.assert_close(plain, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    shifted = time_schedule(4, shift=3.0).double()
    expected = 3.0 * plain / (1.0 + 2.0 * plain)
    torch.testing.assert_close(shifted, expected, rtol=1e-6, atol=1e-7)
    assert shifted[2].item() == pytest.approx(0.75)  # 3·0.5 / (1 + 2·0.5)
    assert shift_time(0.5, 3.0) == pytest.approx(0.75)
    assert shift_time(0.5, 1.0) == 0.5
    with pytest.raises(ValueError, match="shift"):
        shift_time(0.5, 0.0)


def test_interpolate_and_target():
    x0 = torch.randn(3, 4, 5, generator=_gen(1))
    eps = torch.randn(3, 4, 5, generator=_gen(2))
    t = torch.tensor([0.0, 0.5, 1.0])
    xt = interpolate(x0, eps, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[1], 0.5 * (x0[1] + eps[1]))
    torch.testing.assert_close(xt[2], eps[2])
    torch.testing.assert_close(interpolate(x0, eps, 0.25), 0.75 * x0 + 0.25 * eps)
    # The target is the time derivative of the path.
    h = 1e-3
    t_mid = torch.full((3,), 0.4, dtype=torch.float64)
    x0d, epsd = x0.double(), eps.double()
    fd = (interpolate(x0d, epsd, t_mid + h) - interpolate(x0d, epsd, t_mid)) / h
    torch.testing.assert_close(fd, velocity_target(x0d, epsd))
    with pytest.raises(ValueError, match="batch size"):
        interpolate(x0, eps, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="same shape"):
        velocity_target(x0, eps[:2])


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_recovers_x0_with_exact_velocity(shift):
    x0 = torch.randn(2, 8, 3, generator=_gen(3))
    eps = torch.randn(2, 8, 3, generator=_gen(4))
    seen: list[float] = []

    def velocity(x_t: torch.Tensor, t: float) -> torch.Tensor:
        # On the straight path the velocity is constant; check we really are on it.
        torch.testing.assert_close(x_t, interpolate(x0, eps, t), rtol=1e-5, atol=1e-5)
        return velocity_target(x0, eps)

    cfg = FlowSamplerConfig(num_steps=7, shift=shift)
    out = euler_sample(velocity, eps, cfg, on_step=lambda i, t, x: seen.append(t))
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)
    assert len(seen) == 7 and seen[-1] == 0.0


def test_euler_rejects_bad_velocity():
    with pytest.raises(ValueError, match="shaped like x_t"):
        euler_sample(lambda x, t: x[:1], torch.zeros(2, 3), FlowSamplerConfig(num_steps=2))


def test_sample_time_logit_normal():
    t = sample_time(20000, generator=_gen(5))
    assert t.shape == (20000,) and t.dtype == torch.float32
    assert torch.all((t > 0) & (t < 1))
    assert t.mean().item() == pytest.approx(0.5, abs=0.01)
    shifted = sample_time(20000, shift=3.0, generator=_gen(5))
    assert shifted.mean().item() > t.mean().item() + 0.1
    torch.testing.assert_close(shifted, shift_time(t, 3.0))
    torch.testing.assert_close(sample_time(100, generator=_gen(7)), sample_time(100, generator=_gen(7)))


def test_sample_time_beta_and_uniform():
    t = sample_time(20000, distribution="beta", generator=_gen(6))
    assert t.min().item() >= 0.001 and t.max().item() <= 1.0
    # Beta(1.5, 1) has mean 0.6, scaled to 0.6·0.999 + 0.001; CDF at 0.5 is 0.5^1.5.
    assert t.mean().item() == pytest.approx(0.6 * 0.999 + 0.001, abs=0.01)
    assert (t < 0.5).float().mean().item() == pytest.approx(0.5**1.5, abs=0.02)
    u = sample_time(20000, distribution="uniform", generator=_gen(8))
    assert u.mean().item() == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="distribution"):
        sample_time(3, distribution="cosine")
    assert sample_time(0).shape == (0,)


def test_sampler_config_presets_and_json():
    sub = FlowSamplerConfig.subgoal()
    assert (sub.num_steps, sub.shift, sub.text_guidance, sub.image_guidance) == (50, 3.0, 4.0, 2.0)
    assert sub.guidance_interval == (0.4, 1.0) and sub.renorm == "global"
    act = FlowSamplerConfig.actions()
    assert (act.num_steps, act.shift, act.text_guidance, act.image_guidance) == (10, 1.0, 1.0, 1.0)
    assert FlowSamplerConfig.subgoal(num_steps=20).num_steps == 20
    for cfg in (sub, act):
        assert FlowSamplerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="Unknown"):
        FlowSamplerConfig.from_dict({"steps": 3})
    with pytest.raises(ValueError, match="guidance_interval"):
        FlowSamplerConfig(guidance_interval=(0.8, 0.2))
    with pytest.raises(ValueError, match="renorm"):
        FlowSamplerConfig(renorm="channel")
    with pytest.raises(ValueError, match="num_steps"):
        FlowSamplerConfig(num_steps=0)


def _velocities(seed: int = 9) -> GuidedVelocity:
    g = _gen(seed)
    return GuidedVelocity(
        cond=torch.randn(2, 6, 4, generator=g),
        no_text=torch.randn(2, 6, 4, generator=g),
        no_image=torch.randn(2, 6, 4, generator=g),
    )


def test_guidance_reduces_to_cond():
    v = _velocities()
    unit = FlowSamplerConfig.subgoal(text_guidance=1.0, image_guidance=1.0)
    assert torch.equal(combine_guidance(v, unit, 0.9), v.cond)
    guided = FlowSamplerConfig.subgoal()
    assert torch.equal(combine_guidance(v, guided, 0.3), v.cond)  # below the interval
    assert torch.equal(combine_guidance(v, guided, 0.4), v.cond)  # interval is open at t_lo
    assert torch.equal(combine_guidance(GuidedVelocity(v.cond), guided, 0.9), v.cond)
    assert not torch.allclose(combine_guidance(v, guided, 0.9), v.cond)


def test_guidance_formula_without_renorm():
    v = _velocities()
    cfg = FlowSamplerConfig.subgoal(renorm="none")
    text = v.no_text + 4.0 * (v.cond - v.no_text)
    expected = v.no_image + 2.0 * (text - v.no_image)
    torch.testing.assert_close(combine_guidance(v, cfg, 1.0), expected)
    only_text = GuidedVelocity(v.cond, no_text=v.no_text)
    torch.testing.assert_close(combine_guidance(only_text, cfg, 0.5), text)
    only_image = GuidedVelocity(v.cond, no_image=v.no_image)
    torch.testing.assert_close(
        combine_guidance(only_image, cfg, 0.5), v.no_image + 2.0 * (v.cond - v.no_image)
    )


def test_global_renorm_bounds_norm():
    v = _velocities()
    cfg = FlowSamplerConfig.subgoal()
    out = combine_guidance(v, cfg, 0.9)
    for b in range(2):
        assert out[b].norm().item() <= v.cond[b].norm().item() * (1 + 1e-5)
    raw = combine_guidance(v, FlowSamplerConfig.subgoal(renorm="none"), 0.9)
    # Renorm only rescales each sample, so the direction is unchanged.
    cos = torch.nn.functional.cosine_similarity(out.flatten(1), raw.flatten(1))
    torch.testing.assert_close(cos, torch.ones(2))
    floor = combine_guidance(v, FlowSamplerConfig.subgoal(renorm_min=1.0), 0.9)
    torch.testing.assert_close(floor, raw)


def test_euler_uses_guidance_only_inside_interval():
    calls: list[float] = []

    def velocity(x_t: torch.Tensor, t: float) -> GuidedVelocity:
        calls.append(t)
        return GuidedVelocity(cond=torch.ones_like(x_t), no_text=torch.zeros_like(x_t))

    cfg = FlowSamplerConfig(num_steps=4, text_guidance=3.0, guidance_interval=(0.5, 1.0), renorm="none")
    out = euler_sample(velocity, torch.zeros(1, 2), cfg)
    # Steps at t = 1.0, 0.75 are guided (v = 3), t = 0.5, 0.25 are not (v = 1); each dt = -0.25.
    torch.testing.assert_close(out, torch.full((1, 2), -0.25 * (3 + 3 + 1 + 1)))
    assert calls == [1.0, 0.75, 0.5, 0.25]


def test_guided_velocity_shape_check():
    with pytest.raises(ValueError, match="no_text"):
        GuidedVelocity(cond=torch.zeros(2, 3), no_text=torch.zeros(3, 2))
