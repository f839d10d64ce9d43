"""Config choices: Literal fields are checked with the key and the choices, however the config was made."""

from __future__ import annotations

import dataclasses

import pytest

from diffiqt import config as configs
from diffiqt.diffusion import SAMPLERS
from diffiqt.errors import ConfigError


@pytest.mark.parametrize(
    "assignment, message",
    [
        (
            'data.layout="diagonal"',
            "config key 'data.layout': expected one of 'auto', 'patches', 'volume', got 'diagonal'",
        ),
        ('diffusion.loss="huber"', "config key 'diffusion.loss': expected one of 'mse', 'l1', got 'huber'"),
        ('diffusion.sampler="euler"', "config key 'diffusion.sampler': expected one of 'paper', 'ancestral', 'ddim'"),
        ('device="gpu"', "config key 'device': expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ],
)
def test_a_wrong_choice_names_the_key_and_the_choices(assignment, message):
    with pytest.raises(ConfigError, match=message) as err:
        configs.resolve(assignments=(assignment,))  # resolve validates
    assert "\n" not in str(err.value)


def test_choices_are_checked_in_configs_built_in_python():
    cfg = configs.TrainConfig()
    cfg.data = dataclasses.replace(cfg.data, layout="diagonal")  # type: ignore[arg-type]  # the misuse under test
    with pytest.raises(ConfigError, match="data.layout"):
        configs.validate(cfg)


def test_valid_choices_and_devices_pass():
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert configs.resolve(assignments=(f'device="{device}"', 'data.layout="volume"')).device == device


def test_the_sampler_choices_are_the_samplers_and_the_defaults_are_shared():
    assert set(SAMPLERS) == set(configs.SamplerName.__args__)
    assert configs.DiffusionConfig().sampler == configs.DEFAULT_SAMPLER
    assert configs.DiffusionConfig().sample_steps == configs.DEFAULT_STEPS
    from diffiqt.inference.enhance import EnhanceOptions
    from diffiqt.models.loading import Model

    assert Model.sampler == configs.DEFAULT_SAMPLER and Model.steps == configs.DEFAULT_STEPS
    assert EnhanceOptions().sampler is None and EnhanceOptions().steps is None  # the model's own
