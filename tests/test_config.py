from dataclasses import fields

import pytest
from transformers import HfArgumentParser

from hf_distill import DistillationArguments
from hf_distill.config import parse_layer_map
from hf_distill.losses import DIVERGENCE_NAMES, DIVERGENCES


def make(**kw):
    return DistillationArguments(output_dir="unused", report_to=[], **kw)


def test_defaults_follow_the_design():
    a = make()
    assert (a.temperature, a.soft_weight, a.hard_weight, a.hidden_weight) == (2.0, 0.9, 0.1, 0.0)
    assert a.hidden_loss == "mse" and a.layer_map is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"soft_weight": -0.1}, "soft_weight must be >= 0"),
        ({"hard_weight": -1}, "hard_weight must be >= 0"),
        ({"hidden_weight": -2}, "hidden_weight must be >= 0"),
        ({"soft_weight": 0, "hard_weight": 0}, "all 0"),
        ({"hidden_loss": "l1"}, "hidden_loss must be"),
        ({"layer_map": "1-2,3:4"}, "layer_map='1-2,3:4' is not valid"),
        ({"layer_map": "1:2,1:4"}, "names a student layer twice"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_layer_map_parsing():
    assert parse_layer_map("1:2, 2:4,3:6") == {1: 2, 2: 4, 3: 6}
    assert parse_layer_map("0:0") == {0: 0}
    assert parse_layer_map(None) is None


# ---- divergence fields -----------------------------------------------------------------------------------------


def test_divergence_defaults_keep_todays_loss():
    a = make()
    assert (a.divergence, a.jsd_beta, a.skew_alpha, a.loss_chunk_size) == ("forward_kl", 0.5, 0.1, None)
    assert a.divergence_kwargs() == {}


def test_divergence_choices_come_from_the_registry():
    choices = {f.name: f.metadata.get("choices") for f in fields(DistillationArguments)}
    assert choices["divergence"] == list(DIVERGENCE_NAMES)
    assert set(DIVERGENCES) <= set(DIVERGENCE_NAMES) and "mse" in DIVERGENCE_NAMES
    (parsed,) = HfArgumentParser(DistillationArguments).parse_args_into_dataclasses(
        [
            "--output_dir",
            "unused",
            "--report_to",
            "none",
            "--divergence",
            "jsd",
            "--jsd_beta",
            "0.3",
            "--loss_chunk_size",
            "256",
        ]
    )
    assert (parsed.divergence, parsed.jsd_beta, parsed.loss_chunk_size) == ("jsd", 0.3, 256)


@pytest.mark.parametrize(
    "divergence, kwargs",
    [
        ("forward_kl", {}),
        ("reverse_kl", {}),
        ("tvd", {}),
        ("mse", {}),
        ("jsd", {"jsd_beta": 0.25}),
        ("skew_forward_kl", {"skew_alpha": 0.2}),
        ("skew_reverse_kl", {"skew_alpha": 0.2}),
    ],
)
def test_divergence_kwargs_are_the_chosen_divergences_params(divergence, kwargs):
    a = make(divergence=divergence, jsd_beta=0.25, skew_alpha=0.2)
    assert a.divergence_kwargs() == kwargs


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"jsd_beta": -0.1}, r"jsd_beta must be in \[0, 1\], got -0.1"),
        ({"jsd_beta": 1.5, "divergence": "jsd"}, r"jsd_beta must be in \[0, 1\], got 1.5"),
        ({"skew_alpha": 1.0, "divergence": "skew_forward_kl"}, r"skew_alpha must be in \[0, 1\), got 1.0"),
        ({"skew_alpha": -0.5}, r"skew_alpha must be in \[0, 1\)"),
        ({"divergence": "kl"}, "divergence must be one of"),
        ({"loss_chunk_size": 0}, "loss_chunk_size must be a positive number"),
        ({"loss_chunk_size": -4}, "loss_chunk_size must be a positive number"),
        ({"loss_chunk_size": 2.5}, "loss_chunk_size must be a positive number"),
        ({"logit_loss": "mse", "divergence": "jsd"}, "disagree"),
        ({"logit_loss": "kl", "divergence": "mse"}, "disagree"),
        ({"logit_loss": "l1"}, "logit_loss must be"),
    ],
)
def test_bad_divergence_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_old_logit_loss_name_still_selects_mse():
    assert make(logit_loss="mse").divergence == "mse"
    assert make(logit_loss="kl", divergence="reverse_kl").divergence == "reverse_kl"
    assert make(divergence="jsd", jsd_beta=0.0).divergence_kwargs() == {"jsd_beta": 0.0}  # endpoints are valid
    assert make(divergence="jsd", jsd_beta=1.0).divergence_kwargs() == {"jsd_beta": 1.0}
