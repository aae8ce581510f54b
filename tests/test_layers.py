"""Layer maps, projections and student initialisation, table-driven over architectures."""

import pytest
import torch
from testing_utils import tiny_bert, tiny_distilbert, tiny_gpt2, tiny_llama, tiny_roberta

from hf_distill import init_student_from_teacher, uniform_layer_map
from hf_distill.layers import _layer_list_path, build_projections, resolve_layer_map


def test_uniform_layer_map():
    assert uniform_layer_map(6, 12) == {1: 2, 2: 4, 3: 6, 4: 8, 5: 10, 6: 12}
    assert uniform_layer_map(3, 6) == {1: 2, 2: 4, 3: 6}
    assert uniform_layer_map(4, 6) == {1: 1, 2: 3, 3: 4, 4: 6}
    with pytest.raises(ValueError, match="explicit layer_map"):
        uniform_layer_map(8, 6)


def test_resolve_layer_map_checks_ranges():
    assert resolve_layer_map("0:0,3:6", 3, 6) == {0: 0, 3: 6}
    with pytest.raises(ValueError, match="student index 4 is out of range"):
        resolve_layer_map("4:6", 3, 6)
    with pytest.raises(ValueError, match="teacher index 7 is out of range"):
        resolve_layer_map("1:7", 3, 6)


def test_projections_only_when_widths_differ():
    assert build_projections({1: 2}, 64, 64) is None
    proj = build_projections({1: 2, 3: 6}, 32, 64)
    assert set(proj.keys()) == {"1", "3"} and proj["1"].weight.shape == (64, 32)


# architecture -> (builder, expected dotted path of its block list)
ARCHITECTURES = {
    "bert": (lambda: tiny_bert(layers=6, hidden=32), "bert.encoder.layer"),
    "roberta": (lambda: tiny_roberta(layers=6), "roberta.encoder.layer"),
    "distilbert": (lambda: tiny_distilbert(layers=6), "distilbert.transformer.layer"),
    "gpt2": (lambda: tiny_gpt2(layers=6), "transformer.h"),
    "llama": (lambda: tiny_llama(layers=6), "model.layers"),
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("layers", [None, [0, 5]])
def test_init_student_copies_the_right_tensors(arch, layers):
    build, path = ARCHITECTURES[arch]
    teacher = build()
    assert _layer_list_path(teacher) == path
    student = init_student_from_teacher(teacher, num_layers=3 if layers is None else None, layers=layers)
    copied = [1, 3, 5] if layers is None else layers  # uniform 6 -> 3 copies blocks 1, 3, 5 (0-based)
    assert type(student) is type(teacher)
    assert student.config.num_hidden_layers == len(copied)
    assert teacher.config.num_hidden_layers == 6  # the teacher's config is not touched

    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    prefix = path + "."
    checked = 0
    for name, value in s_sd.items():
        if name.startswith(prefix):
            k, rest = name[len(prefix) :].split(".", 1)
            source = f"{prefix}{copied[int(k)]}.{rest}"
        else:
            source = name  # embeddings, pooler, final norm, head
        assert torch.equal(value, t_sd[source]), name
        checked += 1
    assert checked == len(s_sd)
    # the copy is independent of the teacher
    next(student.parameters()).data.add_(1.0)
    assert not torch.equal(next(student.parameters()), next(teacher.parameters()))
    # and it runs
    out = student(input_ids=torch.tensor([[5, 6, 7, 8]]))
    assert torch.isfinite(out.logits).all()


def test_bert_12_to_6_student_reproduces_teacher_blocks():
    """Student block i computes what teacher block 2i-1 (0-based) computes: same input, same output."""
    teacher = tiny_bert(layers=12, hidden=64)
    student = init_student_from_teacher(teacher, num_layers=6).eval()
    x = torch.randn(2, 5, 64)
    for k, j in enumerate([1, 3, 5, 7, 9, 11]):
        torch.testing.assert_close(student.bert.encoder.layer[k](x)[0], teacher.bert.encoder.layer[j](x)[0])


def test_init_student_rejects_bad_layers():
    teacher = tiny_bert(layers=4, hidden=32)
    with pytest.raises(ValueError, match="do not exist"):
        init_student_from_teacher(teacher, layers=[0, 4])
    with pytest.raises(ValueError, match="num_layers"):
        init_student_from_teacher(teacher)
