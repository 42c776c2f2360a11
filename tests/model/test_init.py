"""Fresh-model initialisation: the flow heads start at zero whatever order transformers inits in."""

from __future__ import annotations

import torch

from emcot.config import EmCoTConfig
from emcot.model.modeling import EmCoTModel


def test_fresh_flow_heads_predict_zero_velocity_and_the_rest_is_random():
    torch.manual_seed(0)
    model = EmCoTModel(EmCoTConfig.from_preset("tiny"))
    assert model.subgoal is not None
    hidden = torch.randn(3, model.config.hidden_size)
    assert torch.count_nonzero(model.subgoal.velocity(hidden)) == 0
    assert torch.count_nonzero(model.action.velocity(hidden)) == 0
    # The in-projections keep the normal(0.02) start (std of a 0.02-normal matrix ≈ 0.02).
    assert abs(float(model.action.action_in.weight.std()) - 0.02) < 0.01
    # Re-initialising in any module order (parents first here) keeps them at zero.
    model.action.action_out.weight.data.normal_()
    for module in [model, *model.modules()]:
        model._init_weights(module)
    assert torch.count_nonzero(model.action.action_out.weight) == 0
