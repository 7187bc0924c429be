"""Each trial's data as an MLflow dataset input: the digest of the data actually used
(``workers.data.dataset.data_digest``), its description (``workers.data.description``), and
the input on a real ``mlflow server`` (``TrialRunLogger.start``; a finished sweep's runs)."""

from __future__ import annotations

import dataclasses
import json
import uuid

import mlflow
import pytest

from orchestrator.run import worker_config
from test_data import write_cifar10, write_image_table
from workers.config import TrialConfig
from workers.data import load_dataset, load_image_arrays, shuffled_labels, stratified_subset
from workers.data.dataset import data_digest
from workers.data.description import describe_dataset
from workers.data.sources import digits_file
from workers.mlflow_log import TrialRunLogger, dataset_input

DIGITS = TrialConfig(dataset="digits", train_size=200, test_size=100, data_seed=3)


def test_the_digest_is_of_the_images_and_labels_the_trial_trains_and_tests_on():
    arrays = load_image_arrays("digits", DIGITS.data_dir)
    train = stratified_subset(arrays.train_labels, 200, 3)
    test = stratified_subset(arrays.test_labels, 100, 3)
    expected = data_digest([("train", arrays.train_images[train], arrays.train_labels[train]),
                            ("test", arrays.test_images[test], arrays.test_labels[test])])
    assert load_dataset(DIGITS).digest == expected
    shuffled = shuffled_labels(arrays.train_labels[train], 3)
    assert load_dataset(DIGITS.replace(shuffle_labels=True)).digest == data_digest(
        [("train", arrays.train_images[train], shuffled),
         ("test", arrays.test_images[test], arrays.test_labels[test])])


def test_the_digest_follows_the_data_and_nothing_else():
    digest = load_dataset(DIGITS).digest
    assert len(digest) == 16 and int(digest, 16) >= 0
    for change in ({"train_size": 201}, {"test_size": None}, {"data_seed": 4}, {"shuffle_labels": True}):
        assert load_dataset(DIGITS.replace(**change)).digest != digest, change
    for same in ({"sigma": 10.0}, {"seed": 5}, {"hidden": 8, "activation": "relu"}, {"probe_per_class": 3}):
        assert load_dataset(DIGITS.replace(**same)).digest == digest, same


def test_description_of_digits_names_the_bundled_file_and_the_splits():
    description = describe_dataset(DIGITS, load_dataset(DIGITS))
    assert (description.name, description.source_kind) == ("digits", "scikit-learn")
    assert description.source == str(digits_file())
    assert description.profile == {
        "train": 200, "test": 100, "train_available": 1198, "test_available": 599,
        "subset": "stratified by class, data_seed 3", "labels": "original", "classes": 10,
        "image": "8x8x1", "format": "scikit-learn"}


def test_description_of_torchvision_files_and_of_a_parquet_table(tmp_path):
    write_cifar10(tmp_path / "tv", per_batch=40)
    config = TrialConfig(dataset="cifar10", data_dir=str(tmp_path / "tv"), shuffle_labels=True)
    description = describe_dataset(config, load_dataset(config))
    assert description.source == str((tmp_path / "tv" / "cifar-10-batches-py").resolve())
    assert description.profile["train"] == 200 and description.profile["test"] == 40
    assert description.profile["subset"] == "none"
    assert description.profile["labels"] == "shuffled, data_seed 0"
    assert description.profile["image"] == "32x32x3"

    import numpy as np
    images = [np.full((8, 8, 3), i * 20, np.uint8) for i in range(12)]
    write_image_table(tmp_path / "t.parquet", ["train"] * 10 + ["test"] * 2,
                      list(range(10)) + [0, 1], images)
    config = TrialConfig(dataset="cifar10", data_file=str(tmp_path / "t.parquet"),
                         data_dir=str(tmp_path / "cache"))
    description = describe_dataset(config, load_dataset(config))
    assert (description.source_kind, description.source) == ("parquet", str((tmp_path / "t.parquet").resolve()))
    assert description.profile["format"] == "parquet"


def test_dataset_input_is_a_local_source_with_the_profile_as_json():
    description = describe_dataset(DIGITS, load_dataset(DIGITS))
    recorded = dataset_input(description).dataset
    assert (recorded.name, recorded.digest, recorded.source_type) == ("digits", description.digest, "local")
    assert json.loads(recorded.source) == {"uri": str(digits_file())}
    assert json.loads(recorded.profile) == description.profile


def test_every_attempt_records_the_input_and_the_run_keeps_one(mlflow_server):
    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment = client.create_experiment(f"inputs-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(experiment).info.run_id
    description = describe_dataset(DIGITS, load_dataset(DIGITS))
    for _ in range(2):  # a second attempt (a retry, a resumed sweep) logs it again
        TrialRunLogger(mlflow_server.uri, run_id).start({}, description)
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    assert (inputs[0].dataset.name, inputs[0].dataset.digest) == ("digits", description.digest)
    assert json.loads(inputs[0].dataset.profile)["train"] == 200


@pytest.mark.slow
def test_each_trial_of_a_finished_sweep_records_the_data_it_used(finished_sweep, mlflow_server):
    client = mlflow.MlflowClient(mlflow_server.uri)
    for trial, row in zip(finished_sweep.trials, finished_sweep.rows):
        inputs = client.get_run(row["run_id"]).inputs.dataset_inputs
        assert len(inputs) == 1, trial.name
        recorded = inputs[0].dataset
        config = worker_config(trial.config)
        assert recorded.name == "digits"
        assert recorded.digest == load_dataset(dataclasses.replace(config, device="cpu")).digest
        assert json.loads(recorded.source) == {"uri": str(digits_file())}
        profile = json.loads(recorded.profile)
        assert (profile["train"], profile["test"]) == (200, 200)
        assert profile["subset"] == "stratified by class, data_seed 0"
