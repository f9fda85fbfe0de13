"""Tests for keras_dctsparse.experiments.runs: the stored configuration of a train run."""

import argparse

import pytest

from keras_dctsparse.experiments import runs


def _args(**changes):
    values = {key: None for key in runs.RUN_CONFIG_KEYS}
    values.update(model="lenet300100", dataset="digits", density=0.1, seed=0, lr=0.001)
    values.update(changes)
    return argparse.Namespace(**values, out="ignored", verbose=2)


def test_run_config_holds_only_the_defining_arguments():
    config = runs.run_config(_args())
    assert set(config) == set(runs.RUN_CONFIG_KEYS)
    assert "out" not in config and "verbose" not in config
    assert runs.flag("validation_split") == "--validation-split"


def test_stored_config_is_checked_naming_each_difference(tmp_path):
    assert runs.check_run_config(tmp_path, runs.run_config(_args())) is None
    runs.write_run_state(tmp_path, runs.run_config(_args()), elapsed_s=12.5)
    state = runs.check_run_config(tmp_path, runs.run_config(_args()))
    assert state["elapsed_s"] == 12.5 and state["finished"] is False
    with pytest.raises(runs.RunConfigError) as error:
        runs.check_run_config(tmp_path, runs.run_config(_args(density=0.05, lr=0.01)))
    message = str(error.value)
    assert "--density 0.1 (stored) vs 0.05 (given)" in message
    assert "--lr 0.001 (stored) vs 0.01 (given)" in message
    assert "--seed" not in message and "start afresh" in message


def test_unreadable_record_is_a_clear_error(tmp_path):
    (tmp_path / runs.RUN_CONFIG_FILE).write_text("{not json")
    with pytest.raises(runs.RunConfigError, match="cannot read"):
        runs.check_run_config(tmp_path, runs.run_config(_args()))


def test_static_run_records_no_dynamic_sparsity_settings():
    static = runs.run_config(_args(sparse_training="static", update_every=100,
                                   drop_fraction=0.3, end_fraction=0.75))
    assert static["sparse_training"] == "static"
    assert all(static[key] is None for key in runs.DYNAMIC_SPARSITY_KEYS)
    assert runs.run_config(_args())["sparse_training"] == "static"  # attribute absent
    rigl = runs.run_config(_args(sparse_training="rigl", update_every=100,
                                 drop_fraction=0.3, end_fraction=0.75))
    assert (rigl["update_every"], rigl["drop_fraction"], rigl["end_fraction"]) == (100, 0.3, 0.75)


def test_record_from_before_dynamic_sparse_training_is_a_static_run(tmp_path):
    old = runs.run_config(_args())
    for key in ("sparse_training", *runs.DYNAMIC_SPARSITY_KEYS):
        del old[key]
    runs.write_run_state(tmp_path, old, elapsed_s=1.0)
    assert runs.check_run_config(tmp_path, runs.run_config(_args(sparse_training="static")))
    with pytest.raises(runs.RunConfigError) as error:
        runs.check_run_config(
            tmp_path,
            runs.run_config(_args(sparse_training="rigl", update_every=100,
                                  drop_fraction=0.3, end_fraction=0.75)),
        )
    assert "--sparse-training 'static' (stored) vs 'rigl' (given)" in str(error.value)
    assert "--update-every None (stored) vs 100 (given)" in str(error.value)


def test_extra_state_is_stored(tmp_path):
    runs.write_run_state(tmp_path, runs.run_config(_args()), 3.0, position_updates=7)
    state = runs.check_run_config(tmp_path, runs.run_config(_args()))
    assert state["position_updates"] == 7 and state["elapsed_s"] == 3.0
