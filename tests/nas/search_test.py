"""End-to-end `search()` (search.py): train 2-3 steps, resume, rank, search."""

import glob
import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfmetanas import errors, search
from tfmetanas.experiment import workdir as workdir_lib


def _config(strategy="sumnas"):
    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "nb201", "sumnas.py")
    spec = importlib.util.spec_from_file_location("nb201_sumnas_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data.source = "random"
    config.data.num_classes = 4
    config.data.per_class = 6
    config.data.val_per_class = 2
    config.data.image_size = 8
    config.model.channels = 2
    config.train.strategy = strategy
    config.train.inner_steps = 2
    config.train.steps = 2
    config.train.batch_size = 8
    config.train.eval_every = 100
    config.train.checkpoint_every = 1
    config.search.generations = 1
    config.search.population = 2
    config.search.offspring = 2
    config.search.rank.num_archs = 3
    config.search.rank.calibration_batches = 1
    config.search.rank.calibration_batch_size = 8
    config.search.max_macs = 1e9
    return config


def _first_step_seconds(workdir):
    """Steps at which the workdir's train summaries record a (positive) first-step time."""
    steps = []
    for path in sorted(glob.glob(os.path.join(workdir, "train", "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "train/first_step_seconds":
                    assert float(tf.make_ndarray(value.tensor)) > 0
                    steps.append(event.step)
    return sorted(steps)


def test_train_resume_rank_search(tmp_path):
    workdir = str(tmp_path / "run")
    config = _config()
    out = search.search(config, workdir, ["train"])
    assert set(out["train"]) >= {"loss", "accuracy"}
    assert workdir_lib.has_checkpoint(workdir)
    assert _first_step_seconds(workdir) == [1]
    config.train.steps = 3  # resume: one more step
    # The same variables and function, computed another way: resumable.
    config.model.selection = "stack"
    search.search(config, workdir, ["train"])
    ckpt = os.path.basename(tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")))
    assert ckpt.endswith("-3")
    assert _first_step_seconds(workdir) == [1, 3]  # each process's first step
    out = search.search(config, workdir, ["rank", "search"])
    with open(os.path.join(workdir, "search.json")) as f:
        result = json.load(f)
    assert len(result["best_arch"]) == 6 and result["best_macs"] <= 1e9
    assert len(out["rank"]["archs"]) == 3


def test_one_evaluator_serves_every_stage_and_training_graphs_are_let_go(tmp_path, monkeypatch):
    made, released = [], []
    make = search._evaluator
    monkeypatch.setattr(search, "_evaluator", lambda *a: made.append(make(*a)) or made[-1])
    release = search.sumnas.SupernetTrainer.release
    monkeypatch.setattr(search.sumnas.SupernetTrainer, "release",
                        lambda self: (released.append(self), release(self)))
    workdir = str(tmp_path / "run")
    config = _config()
    config.train.eval_every = 1  # evaluations during training, then ranking and search
    out = search.search(config, workdir, ["train", "rank", "search"])
    assert len(made) == 1 and len(released) == 1
    with pytest.raises(errors.TFMetaNASError, match="released"):
        released[0].train_step(np.zeros([1, 8, 8, 1], np.float32), np.zeros([1], np.int32))
    # The shared evaluator ranks as a new one does in a new run on the checkpoint.
    again = search.search(config, workdir, ["rank"])
    assert len(made) == 2 and all(e._score.released for e in made)
    assert len(out["rank"]["archs"]) == len(again["rank"]["archs"]) == 3
    for a, b in zip(out["rank"]["archs"], again["rank"]["archs"]):
        assert (a["accuracy"], a["loss"]) == (b["accuracy"], b["loss"])


def test_gathered_selection_with_xla_is_refused_before_anything_runs(tmp_path):
    config = _config()
    config.model.selection, config.train.jit_compile = "gather", True
    with pytest.raises(errors.ConfigError, match="XLA"):
        search.search(config, str(tmp_path / "run"), ["train"])
    assert not os.path.exists(tmp_path / "run")


def test_the_supernet_starts_from_the_seeds_weights():
    config = _config()
    weights = [[v.numpy() for v in search._build(config)[1].trainable_variables] for _ in range(2)]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
    config.train.seed = 1
    other = [v.numpy() for v in search._build(config)[1].trainable_variables]
    assert any(not np.array_equal(a, b) for a, b in zip(weights[0], other))


def test_the_evaluator_keeps_the_validation_images_as_uint8():
    # The data's uint8 pixels, converted per batch (supernet.SubmodelEvaluator):
    # not a float32 copy four times their size.
    config = _config()
    data, model, _ = search._build(config)
    evaluator = search._evaluator(config, data, model)
    assert evaluator.val_images.dtype == np.uint8
    np.testing.assert_array_equal(evaluator.val_images, data.val_pixels)


def test_a_new_process_restores_every_trained_variable(tmp_path):
    # The rank and search stages (and a resumed run) rebuild the supernet and
    # restore the checkpoint: every weight and BN statistic must come back.
    workdir = str(tmp_path / "run")
    config = _config()
    config.train.momentum = 0.9
    data, model, trainer = search._build(config)
    search.train(config, workdir, data, model, trainer)
    trained = [v.numpy() for v in model.variables]
    momentum = [v.numpy() for v in trainer.momentum_buffers.values()]
    config.train.seed = 1  # another initialisation, which the restore must overwrite
    _, fresh, again = search._build(config)
    assert any(not np.array_equal(v.numpy(), t) for v, t in zip(fresh.variables, trained))
    search._restore_trained(workdir, again)
    assert len(fresh.variables) == len(trained) > 20
    for v, t in zip(fresh.variables, trained):
        np.testing.assert_array_equal(v.numpy(), t, err_msg=v.path)
    assert len(again.momentum_buffers) == len(momentum) and np.any(momentum[0])
    for v, m in zip(again.momentum_buffers.values(), momentum):
        np.testing.assert_array_equal(v.numpy(), m)


def test_bad_config_values(tmp_path):
    config = _config()
    config.train.strategy = "darts"
    with pytest.raises(errors.ConfigError, match="valid"):
        search.search(config, str(tmp_path / "a"), ["train"])
    config = _config()
    with pytest.raises(errors.ConfigError, match="stages"):
        search.search(config, str(tmp_path / "b"), ["trian"])
    # Refused before any stage runs, and before the workdir is made.
    for key, value in (("search.method", "annealing"), ("data.image_size", 0),
                       ("train.seed", -1)):
        config = _config()
        section, name = key.split(".")
        config[section][name] = value
        with pytest.raises(errors.ConfigError, match=name):
            search.search(config, str(tmp_path / "c"), ["train", "rank", "search"])
        assert not (tmp_path / "c").exists()
    config = _config()
    (tmp_path / "file").write_text("")
    for workdir in ("", str(tmp_path / "file")):
        with pytest.raises(errors.ConfigError, match="workdir"):
            search.search(config, workdir, ["train"])


def test_a_bad_graph_pass_is_refused_before_the_workdir(tmp_path):
    config = _config()
    config.train.skip_graph_optimizations = "remaping"
    with pytest.raises(errors.ConfigError, match="skip_graph_optimizations"):
        search.search(config, str(tmp_path / "d"), ["train"])
    assert not (tmp_path / "d").exists()


def test_non_finite_loss(tmp_path):
    config = _config("spos")
    config.train.learning_rate = 1e30
    config.train.steps = 3
    with pytest.raises(errors.NonFiniteLossError, match="learning_rate"):
        search.search(config, str(tmp_path / "c"), ["train"])
