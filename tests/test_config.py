import pytest

from hf_distill import DistillationArguments
from hf_distill.config import parse_layer_map


def make(**kw):
    return DistillationArguments(output_dir="unused", report_to=[], **kw)


def test_defaults_follow_the_design():
    a = make()
    assert (a.temperature, a.soft_weight, a.hard_weight, a.hidden_weight) == (2.0, 0.9, 0.1, 0.0)
    assert a.hidden_loss == "mse" and a.layer_map is None


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"temperature": -1.0}, "temperature must be > 0"),
    ({"soft_weight": -0.1}, "soft_weight must be >= 0"),
    ({"hard_weight": -1}, "hard_weight must be >= 0"),
    ({"hidden_weight": -2}, "hidden_weight must be >= 0"),
    ({"soft_weight": 0, "hard_weight": 0}, "all 0"),
    ({"hidden_loss": "l1"}, "hidden_loss must be"),
    ({"layer_map": "1-2,3:4"}, "layer_map='1-2,3:4' is not valid"),
    ({"layer_map": "1:2,1:4"}, "names a student layer twice"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_layer_map_parsing():
    assert parse_layer_map("1:2, 2:4,3:6") == {1: 2, 2: 4, 3: 6}
    assert parse_layer_map("0:0") == {0: 0}
    assert parse_layer_map(None) is None
