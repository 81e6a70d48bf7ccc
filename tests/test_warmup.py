"""The Classify page's warm-up: what it runs on, and when it stays out of the way."""

from __future__ import annotations

import pytest

from ctdemo.app import warmup
from ctdemo.explain.lungs import segment_lungs
from ctdemo.io.body import body_box


def test_the_phantom_takes_the_path_a_real_slice_takes():
    """Two lung fields found and a body to cut to: the warm-up traces the usual path, not a
    refusal's."""
    phantom = warmup.phantom_slice()
    lungs = segment_lungs(phantom)
    assert lungs.ok and 0.1 < lungs.mask.mean() < 0.4
    box = body_box(phantom)
    assert box.kept_share(phantom.shape) < 0.9


@pytest.mark.parametrize(
    ("model_key", "setting"), [("own:mine", "1"), ("trained:job", "1"), ("shipped:cnn", "0")]
)
def test_no_warm_up_for_a_session_model_or_when_it_is_turned_off(monkeypatch, model_key, setting):
    monkeypatch.setenv("CTDEMO_WARM_UP", setting)
    ran = []
    monkeypatch.setattr(warmup, "_load_model", ran.append)
    warmup.warm_up(model_key)
    assert ran == []
