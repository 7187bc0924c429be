"""``xmem trial`` through Click's runner: output, JSONL, and user errors (exit 2, no traceback)."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from conftest import assert_user_error
from orchestrator.cli import main
from workers import contract


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_trial_writes_one_json_object_per_evaluated_epoch(tmp_path):
    out = tmp_path / "m.jsonl"
    result = _invoke("trial", "--set", "dataset=digits", "--set", "sigma=1e-2", "--set", "epochs=4",
                     "--set", "eval_every=2", "--set", "hidden=64", "--set", f"data_dir={tmp_path}",
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line[contract.EPOCH] for line in lines] == [0, 2, 4]
    assert contract.ALIGN_GRAD in lines[0] and contract.TEST_ACC in lines[-1]
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
    assert_user_error(result, "'sigma' must be > 0",
                      "'activation' is 'tanh'; valid choices: sin, relu, sigmoid, linear",
                      "'lr' must be > 0", "unknown key 'hiden' (did you mean 'hidden'?)")
    assert not out.exists()


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("dataset: digits\nsigma: [1, 2\nepochs: 3\n")
    result = _invoke("trial", str(config))
    assert_user_error(result, str(config), "line 3")


def test_missing_dataset_offline_is_a_user_error(tmp_path):
    result = _invoke("trial", "--set", "dataset=cifar10", "--set", f"data_dir={tmp_path}")
    assert_user_error(result, "cifar-10-batches-py", "download")


def test_help_keys_lists_every_trial_key():
    from workers.config import TrialConfig

    result = _invoke("trial", "--help-keys")
    assert result.exit_code == 0
    for key in TrialConfig.keys():
        assert f"\n{key} (default" in "\n" + result.output


def test_out_in_a_missing_folder_fails_before_any_data_is_loaded(tmp_path):
    # cifar10 is absent from data_dir: had the data been loaded first, that would be the error.
    out = tmp_path / "no-such-dir" / "m.jsonl"
    result = _invoke("trial", "--set", "dataset=cifar10", "--set", f"data_dir={tmp_path}",
                     "--out", str(out))
    assert_user_error(result, f"--out {out}", "does not exist", "mkdir -p")
    assert "cifar-10-batches-py" not in result.output
    assert not out.parent.exists()


def test_out_under_a_file_is_a_user_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = _invoke("trial", "--set", f"data_dir={tmp_path}", "--out", str(blocker / "m.jsonl"))
    assert_user_error(result, f"--out {blocker / 'm.jsonl'}", "is not a folder")


def test_out_that_cannot_be_opened_is_a_user_error(tmp_path, monkeypatch):
    """What the up-front check cannot see (/proc, read-only mounts as root) fails at the
    open, still as a user error."""
    from workers import local

    monkeypatch.setattr(local, "_check_writable", lambda path: None)
    out = tmp_path / "no-such-dir" / "m.jsonl"
    result = _invoke("trial", "--set", "epochs=0", "--set", "hidden=8", "--set", f"data_dir={tmp_path}",
                     "--out", str(out))
    assert_user_error(result, f"--out {out}", "cannot open it for writing")


def test_seeds_beyond_32_bits_are_a_config_error():
    result = _invoke("trial", "--set", "seed=99999999999999999999", "--set", "data_seed=2147483648")
    assert_user_error(result, "'seed' must be <= 2147483647, got 99999999999999999999",
                      "'data_seed' must be <= 2147483647, got 2147483648")


def test_non_finite_floats_are_a_config_error():
    result = _invoke("trial", "--set", "sigma=.inf", "--set", "lr=.nan", "--set", "temperature=-.inf",
                     "--set", "momentum=.inf")
    assert_user_error(result, "'sigma' must be a finite number, got inf",
                      "'lr' must be a finite number, got nan",
                      "'temperature' must be a finite number, got -inf",
                      "'momentum' must be a finite number, got inf")


def test_convnet_over_a_table_of_too_small_images_is_a_user_error(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    def png(value: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.full((12, 12, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    table = tmp_path / "small.parquet"
    pq.write_table(pa.table({"split": ["train", "train", "test", "test"], "label": [0, 1, 0, 1],
                             "image": [png(v) for v in (0, 50, 100, 150)]}), table)
    result = _invoke("trial", "--set", "dataset=cifar10", "--set", "model=convnet",
                     "--set", f"data_file={table}", "--set", f"data_dir={tmp_path}",
                     "--set", "probe_per_class=2", "--set", "epochs=1")
    assert_user_error(result, f"data_file {table}", "12x12", "at least 15x15", "model mlp")


def test_error_summary_is_one_line_naming_what_went_wrong():
    from workers.errors import ConfigError, XmemError, error_summary

    config_error = ConfigError(["'sigma' must be > 0, got -1", "'lr' must be > 0"], source="sweep trial")
    assert error_summary(config_error) == "sweep trial: 'sigma' must be > 0, got -1"
    assert error_summary(XmemError("data_file x.parquet: no such file\nrun xmem ...")) == \
        "data_file x.parquet: no such file"
    assert error_summary(RuntimeError("\nboom\nmore")) == "RuntimeError: boom"
    assert error_summary(MemoryError()) == "MemoryError"
