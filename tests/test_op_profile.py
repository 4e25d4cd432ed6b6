"""benchmarks.op_profile: the kinds partition the profiled time, and each case profiles what it says."""

from __future__ import annotations

import pytest

from benchmarks.op_profile import CATEGORIES, OTHER, categorise, inference_case, markdown, training_case


def test_categorise_sums_each_operator_into_its_kind():
    self_ms = {
        "aten::mkldnn_convolution": 5.0,
        "aten::convolution_backward": 7.0,
        "grmpose::adaptive_conv_forward": 2.0,
        "grmpose::adaptive_transform_forward": 1.0,
        "aten::native_batch_norm": 0.5,
        "aten::native_batch_norm_backward": 0.25,
        "aten::add_": 3.0,
        "aten::relu_": 1.5,
        "aten::_fused_adamw_": 0.75,
    }
    kinds = categorise(self_ms)
    assert list(kinds) == [*CATEGORIES, OTHER]
    assert kinds["convolutions, forward"] == 5.0
    assert kinds["convolutions, backward"] == 7.0
    assert kinds["adaptive convolution (fused kernel), forward"] == 3.0
    assert kinds["BatchNorm"] == 0.75
    assert kinds["optimiser"] == 0.75
    assert kinds[OTHER] == 4.5  # add_ and relu_
    assert kinds["matrix products"] == 0.0
    assert sum(kinds.values()) == pytest.approx(sum(self_ms.values()))


def test_cases_profile_a_training_step_and_a_forward(tmp_path):
    train = training_case(64, 1, tmp_path / "data")
    infer = inference_case("tiny", 64)
    for row in (train, infer):
        assert sum(row["by_kind_ms"].values()) == pytest.approx(row["profiled_ms"])
        assert row["by_kind_ms"]["convolutions, forward"] > 0
        adaptive = [k for k in row["by_kind_ms"] if "adaptive" in k or "grid_sample" in k]
        assert sum(row["by_kind_ms"][k] for k in adaptive) > 0
    assert train["by_kind_ms"]["convolutions, backward"] > 0 and train["by_kind_ms"]["optimiser"] > 0
    assert infer["by_kind_ms"]["convolutions, backward"] == 0 and infer["by_kind_ms"]["optimiser"] == 0
    text = markdown(
        {"what": "w", "cpu_capability": "c", "threads": 1, "measured": "m", "rows": [train, infer]}
    )
    assert "| kind | training: tiny at 64 | inference: tiny at 64 |" in text
    assert "| convolutions, backward | " in text and "| optimiser | " in text
