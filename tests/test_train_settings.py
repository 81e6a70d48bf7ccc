"""Train page settings: presets, the shareable URL, hostile URLs, and the cost estimate."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ctdemo.app.runs import run_label
from ctdemo.app.train_settings import (
    ARCHITECTURES,
    MAX_MEMBERS,
    PAGE_BATCH_SIZE,
    TrainSettings,
    defaults,
    from_query,
    parse_units,
)
from ctdemo.models.architectures import build_model
from ctdemo.models.specs import PRESETS
from ctdemo.models.training_cost import forward_flops, seconds_per_epoch


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_defaults_rebuild_the_preset(arch):
    settings = defaults(arch)
    preset = PRESETS[arch]
    assert settings.architecture() == preset.architecture
    config = settings.config()
    assert config.learning_rate == preset.learning_rate and config.batch_size == PAGE_BATCH_SIZE
    assert config.weight_averaging == preset.weight_averaging


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_url_round_trips_the_settings(arch):
    settings = TrainSettings(**{**defaults(arch).__dict__, "dropout": 0.35, "seed": 7})
    assert from_query(settings.to_query()) == settings


def test_members_round_trip_clamp_and_apply_to_cnns_only():
    ensemble = replace(defaults("cnn"), members=3)
    assert from_query(ensemble.to_query()) == ensemble
    assert ensemble.architecture().members == 3
    single = forward_flops(defaults("cnn").architecture())
    assert forward_flops(ensemble.architecture()) == 3 * single
    assert from_query({"members": "99"}).members == MAX_MEMBERS
    assert from_query({"members": "-2"}).members == 1
    assert from_query({"members": "two"}).members == 1
    assert replace(defaults("mlp"), members=3).architecture().members == 1


def test_density_round_trips_and_reaches_the_cnn_head_only():
    dense = replace(defaults("cnn"), density=True)
    assert from_query(dense.to_query()) == dense
    assert dense.architecture().features == "pixels+distribution"
    assert defaults("cnn").architecture().features == "pixels"
    assert forward_flops(dense.architecture()) > forward_flops(defaults("cnn").architecture())
    assert from_query({"density": "yes"}).density is True
    assert from_query({"density": "<script>"}).density is False
    assert replace(defaults("mlp"), density=True).architecture().features == "distribution"
    assert "cnn + density · dropout" in run_label(dense)


def test_hostile_or_broken_url_values_fall_back_or_clamp():
    query = {
        "arch": "cnn-large; rm -rf /",
        "dropout": "7",
        "epochs": "100000",
        "lr": "0.0009",
        "batch": "999",
        "size": "nan",
        "layers": "16,abc",
        "split": "leaky",
        "seed": "-5",
        "val": "nan",
        "unknown": "x",
    }
    settings = from_query(query)
    base = defaults("cnn")
    assert settings.arch == "cnn" and settings.dropout == 0.8 and settings.epochs == 60
    assert settings.lr == 1e-3 and settings.batch == 128 and settings.size == base.size
    assert settings.layers == base.layers and settings.split == "grouped" and settings.seed == 0
    assert settings.val == base.val


def test_units_are_parsed_with_a_message_for_people():
    assert parse_units("256, 128 ,64") == (256, 128, 64)
    assert parse_units("", allow_empty=True) == ()
    for bad in ("", "a,b", "0", "1,2,3,4,5,6", "5000"):
        with pytest.raises(ValueError, match=r"layers|numbers"):
            parse_units(bad)


def test_flops_count_a_dense_layer_by_hand():
    pixels = TrainSettings(arch="seed-1-mlp", size=24, layers=(10,), dense=())
    assert forward_flops(pixels.architecture()) == 2 * 576 * 10 + 2 * 10 * 2
    distribution = TrainSettings(arch="mlp", size=24, layers=(10,), dense=())
    assert forward_flops(distribution.architecture()) == 2 * 256 * 10 + 2 * 10 * 2


def test_epoch_estimate_is_in_the_measured_ballpark():
    # Measured on this machine (README): 'cnn' 2.5 s, 'mlp' 0.4 s per epoch on 1,588 slices.
    assert 1.5 < seconds_per_epoch(replace(defaults("cnn"), batch=64).config(), 1588) < 4.0
    assert 0.2 < seconds_per_epoch(replace(defaults("mlp"), batch=32).config(), 1588) < 1.0


@pytest.mark.slow
def test_parameter_count_matches_the_built_model():
    settings = defaults("mlp")
    model = build_model(settings.architecture(), 2)
    features = 2 * 128  # intensity and edge quantiles, then batch norm (4 numbers each)
    dense = features * 256 + 256 + 256 * 128 + 128 + 128 * 64 + 64 + 64 * 32 + 32 + 32 * 2 + 2
    expected = 4 * features + dense
    assert model.count_params() == expected
