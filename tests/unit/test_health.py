"""A run that went wrong fails instead of publishing (issue 18): the checks themselves. The
whole path — a real run at an absurd learning rate — is in tests/e2e/test_train_cli.py and, in
the app, tests/tui/test_chat_app.py."""

from __future__ import annotations

import math

import pytest

from sftchat.errors import SftchatError
from sftchat.training.health import TrainingDiverged, check_drift, check_loss


@pytest.mark.parametrize("curve", [
    [3.8, 3.1, 2.0, 1.1, 0.4, 0.1, 0.02],          # a run that learns
    [2.0, 2.1, 2.2, 2.3, 2.4, 2.5],                # noisy, never far above the start
    [3.0, 1.0],                                    # too short to judge a climb
    [],
])
def test_healthy_curves_pass(curve):
    for end in range(len(curve) + 1):
        check_loss(curve[:end], lr=1e-3)


def test_a_climbing_loss_fails_naming_the_climb_and_the_fix():
    curve = [3.84, 3.5, 3.13, 4.5, 6.9, 7.65, 7.9]   # issue 18's broken run, in shape
    check_loss(curve[:5], lr=1e-3)
    with pytest.raises(TrainingDiverged) as caught:
        check_loss(curve[:6], lr=1e-3)
    message = str(caught.value)
    assert "diverged" in message and "step 6" in message and "nothing was published" in message
    assert "--lr" in message and "0.001" in message
    assert isinstance(caught.value, SftchatError)  # one line from the CLI, a failed event


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_loss_that_is_not_a_number_fails_at_once(bad):
    with pytest.raises(TrainingDiverged, match="step 2"):
        check_loss([3.0, bad], lr=10.0)


def test_a_loss_stuck_at_chance_fails():
    """A collapsed model predicts every token alike: its loss is log(vocabulary), step after
    step (the built-in model at --lr 50: 7.35, 7.72, then 6.36 = log 576 for good)."""
    chance = math.log(576)
    curve = [7.35, 7.72, 6.3596, 6.3596, 6.3596]
    check_loss(curve[:4], lr=50.0, chance=chance)
    with pytest.raises(TrainingDiverged, match=r"sat at chance \(6.36.*since step 3"):
        check_loss(curve, lr=50.0, chance=chance)
    check_loss([7.0, 6.5, 6.36, 5.0, 3.0], lr=4e-3, chance=chance)  # passing through: fine


def test_drift_beyond_the_limit_fails():
    check_drift({"prompts": 12, "perplexity_ratio": 1.1}, max_drift=10, lr=1e-3)
    check_drift({"prompts": 0}, max_drift=10, lr=1e-3)   # nothing measured: nothing to judge
    check_drift({"perplexity_ratio": 10.0}, max_drift=10, lr=1e-3)
    with pytest.raises(TrainingDiverged, match=r"×177 less likely.*limit ×10.*nothing was "
                                               r"published"):
        check_drift({"prompts": 12, "perplexity_ratio": 176.6}, max_drift=10, lr=1e-3)
    with pytest.raises(TrainingDiverged):
        check_drift({"prompts": 12, "perplexity_ratio": math.inf}, max_drift=10, lr=1e-3)
    check_drift({"prompts": 12, "perplexity_ratio": 176.6}, max_drift=0, lr=1e-3)  # off


def test_the_drift_limit_is_a_setting_off_for_the_builtin_model(tmp_path):
    from sftchat.config import ConfigError, load_settings, validate_training
    from sftchat.config import TrainingSettings

    assert TrainingSettings().max_drift == 10
    assert load_settings(workspace=str(tmp_path)).training.max_drift == 0   # built-in
    with pytest.raises(ConfigError, match="max_drift must be 0 or more"):
        validate_training(TrainingSettings(max_drift=-1))
