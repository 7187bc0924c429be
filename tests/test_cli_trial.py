"""``xmem trial`` through Click's runner: output, JSONL, and user errors (exit 2, no traceback)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from orchestrator.cli import main
from workers import metrics


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_trial_writes_one_json_object_per_evaluated_epoch(tmp_path):
    out = tmp_path / "m.jsonl"
    result = _invoke("trial", "--set", "dataset=digits", "--set", "sigma=1e-2", "--set", "epochs=4",
                     "--set", "eval_every=2", "--set", "hidden=64", "--set", f"data_dir={tmp_path}",
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line[metrics.EPOCH] for line in lines] == [0, 2, 4]
    assert metrics.ALIGN_GRAD in lines[0] and metrics.TEST_ACC in lines[-1]
    assert "epoch     4 |" in result.output and "status: finished" in result.output


def test_trial_config_file_and_set_override(tmp_path):
    config = tmp_path / "t.yaml"
    config.write_text(f"dataset: digits\nhidden: 32\nepochs: 1\nsigma: 5.0\ndata_dir: {tmp_path}\n")
    out = tmp_path / "m.jsonl"
    result = _invoke("trial", str(config), "--set", "epochs=2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 3  # epochs 0, 1, 2: the --set won
    assert "sigma=5.0" in result.output


def test_every_config_problem_is_reported_at_once_with_exit_code_2(tmp_path):
    out = tmp_path / "m.jsonl"
    result = _invoke("trial", "--set", "sigma=-1", "--set", "activation=tanh", "--set", "lr=0",
                     "--set", "hiden=12", "--out", str(out))
    assert result.exit_code == 2
    message = result.output
    assert "'sigma' must be > 0" in message
    assert "'activation' is 'tanh'; valid choices: sin, relu, sigmoid, linear" in message
    assert "'lr' must be > 0" in message
    assert "unknown key 'hiden' (did you mean 'hidden'?)" in message
    assert "Traceback" not in message
    assert not out.exists()


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("dataset: digits\nsigma: [1, 2\nepochs: 3\n")
    result = _invoke("trial", str(config))
    assert result.exit_code == 2
    assert str(config) in result.output and "line 3" in result.output
    assert "Traceback" not in result.output


def test_missing_dataset_offline_is_a_user_error(tmp_path):
    result = _invoke("trial", "--set", "dataset=cifar10", "--set", f"data_dir={tmp_path}")
    assert result.exit_code == 2
    assert "cifar-10-batches-py" in result.output and "download" in result.output


def test_help_keys_lists_every_trial_key():
    from workers.config import TrialConfig

    result = _invoke("trial", "--help-keys")
    assert result.exit_code == 0
    for key in TrialConfig.keys():
        assert f"\n{key} (default" in "\n" + result.output
