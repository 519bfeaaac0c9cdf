"""The training loop end to end: CLI runs, evaluation JSON, resume, errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfmetanas import compiled, errors
from tfmetanas.experiment import defaults, evaluate, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(steps=4, **overrides):
    """A glyphs 3-way 1-shot run small enough for a unit test."""
    config = defaults.base_config()
    config.data.source = "glyphs"
    config.data.image_size = 14
    config.data.ways, config.data.shots, config.data.queries = 3, 1, 2
    config.model.filters, config.model.num_blocks = 4, 2
    config.inner.steps, config.inner.eval_steps, config.inner.lr = 1, 2, 0.4
    config.meta.meta_batch_size = 2
    config.train.steps = steps
    config.train.eval_every = 0
    config.train.log_every = 2
    config.train.progress = False
    config.eval.num_tasks = 6
    config.eval.num_val_tasks = 4
    config.eval.batch_size = 3
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    return config


def _variables(workdir, config):
    exp = trainer.Experiment(config)
    from tfmetanas.experiment import workdir as workdir_lib

    workdir_lib.restore(workdir, exp.checkpoint, "latest")
    return {v.path: v.numpy() for v in exp.model.variables}, int(exp.step.numpy())


def test_train_then_evaluate_writes_results(tmp_path):
    workdir = str(tmp_path / "run")
    summary = trainer.train(tiny_config(), workdir)
    assert 0.0 <= summary["accuracy_mean"] <= 100.0
    for name in ("config.json", "checkpoints", "train", "eval"):
        assert os.path.exists(os.path.join(workdir, name)), name
    result = evaluate.evaluate_workdir(workdir, split="test", checkpoint="latest")
    with open(os.path.join(workdir, "eval_test.json")) as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(result))
    assert written["num_tasks"] == 6 and written["inner_steps"] == 2
    assert written["accuracy_ci95"] >= 0.0
    # The same fixed test tasks give the same result again.
    again = evaluate.evaluate_workdir(workdir, split="test", checkpoint="latest")
    assert again["accuracy_mean"] == result["accuracy_mean"]


def test_each_new_meta_step_records_its_first_call(tmp_path, monkeypatch):
    # MAML++'s derivative-order annealing: first order for 2 steps, then second.
    made, released = [], []
    make = compiled.step

    def recorded_step(*args, **kwargs):
        made.append(make(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(compiled, "step", recorded_step)
    monkeypatch.setattr(compiled.Step, "release",
                        lambda self, release=compiled.Step.release: (released.append(self),
                                                                     release(self)))
    workdir = str(tmp_path / "run")
    trainer.train(tiny_config(**{"meta.second_order": True, "meta.first_order_until": 2}),
                  workdir)
    # Three compiled steps: the validation's, the first-order and the second-order
    # meta-step. The first-order one was released when the second-order one
    # superseded it, the others when training ended.
    assert len(made) == 3 and released == [made[1], made[0], made[2]]
    assert all(step.released for step in made)
    recorded = {}
    for name in sorted(os.listdir(os.path.join(workdir, "train"))):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, "train", name)):
            for value in event.summary.value:
                if value.tag == "train/first_step_seconds":
                    recorded[event.step] = float(tf.make_ndarray(value.tensor))
    assert sorted(recorded) == [1, 3] and min(recorded.values()) > 0


@pytest.mark.parametrize("algorithm", ["maml", "reptile", "reptile_persistent"])
def test_resumed_run_equals_uninterrupted(tmp_path, algorithm):
    # Not tf.config.experimental.enable_op_determinism(): it is process-wide and
    # makes XLA refuse max-pool gradients in later tests; CPU kernels agree to
    # float32 round-off run to run, which the tolerance below allows.
    overrides = {"meta.algorithm": algorithm.split("_")[0]}
    if algorithm.startswith("reptile"):
        overrides.update({"inner.rule": "adam", "inner.lr": 1e-3})
    if algorithm == "reptile_persistent":
        # The inner Adam state is carried across tasks: it must be checkpointed too.
        overrides["inner.persistent_state"] = True
    straight = str(tmp_path / "straight")
    trainer.train(tiny_config(steps=4, **overrides), straight)
    resumed = str(tmp_path / "resumed")
    trainer.train(tiny_config(steps=2, **overrides), resumed)
    trainer.train(tiny_config(steps=4, **overrides), resumed)
    a, step_a = _variables(straight, tiny_config(steps=4, **overrides))
    b, step_b = _variables(resumed, tiny_config(steps=4, **overrides))
    assert step_a == step_b == 4
    # Not vacuous: the restored variables are the trained ones, not a fresh init.
    fresh = trainer.Experiment(tiny_config(steps=4, **overrides)).model.variables
    assert any(not np.array_equal(a[v.path], v.numpy()) for v in fresh)
    for path in a:
        np.testing.assert_allclose(a[path], b[path], rtol=1e-5, atol=1e-6, err_msg=path)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    trainer.train(tiny_config(steps=2), workdir)
    with pytest.raises(errors.NonFiniteLossError, match="Non-finite"):
        trainer.train(tiny_config(steps=6, **{"inner.lr": 1e30}), workdir)
    # Same model config except the learning rate: the last good checkpoint restores.
    _, step = _variables(workdir, tiny_config(steps=2))
    assert step == 2


def test_workdir_with_another_config_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    trainer.train(tiny_config(steps=1), workdir)
    before = open(os.path.join(workdir, "config.json")).read()
    with pytest.raises(errors.CheckpointError, match="model.filters"):
        trainer.train(tiny_config(steps=2, **{"model.filters": 8}), workdir)
    assert open(os.path.join(workdir, "config.json")).read() == before


def test_top_k_ensemble_evaluation(tmp_path):
    from tfmetanas.experiment import ensemble

    workdir = str(tmp_path / "run")
    config = tiny_config(steps=3)
    config.train.eval_every, config.train.keep_best = 1, 3
    trainer.train(config, workdir)
    result = ensemble.evaluate_ensemble(workdir, split="test", num_tasks=4)
    assert result["protocol"] == "ensemble_top_k" and 1 <= result["k"] <= 3
    assert len(result["member_metrics"]) == result["k"]
    with open(os.path.join(workdir, "eval_test_ensemble.json")) as f:
        assert json.load(f)["num_tasks"] == 4


def test_evaluate_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(errors.CheckpointError, match="no config.json"):
        evaluate.evaluate_workdir(str(tmp_path))


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def test_cli_train_and_evaluate(tmp_path):
    workdir = str(tmp_path / "cli")
    flags = [
        "--config=configs/quickstart.py", f"--workdir={workdir}",
        "--config.train.steps=2", "--config.model.filters=4", "--config.data.image_size=14",
        "--config.meta.meta_batch_size=2", "--config.eval.num_val_tasks=2", "--config.model.num_blocks=2",
        "--config.train.progress=False",
    ]
    run = _cli("tfmetanas.train", *flags)
    assert run.returncode == 0, run.stderr[-2000:]
    run = _cli("tfmetanas.evaluate", f"--workdir={workdir}", "--num_tasks=4")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "accuracy" in run.stdout
    assert json.load(open(os.path.join(workdir, "eval_test.json")))["num_tasks"] == 4


def test_cli_bad_flags_are_clear(tmp_path):
    run = _cli("tfmetanas.train", "--config=configs/quickstart.py", f"--workdir={tmp_path}",
               "--config.inner.stepz=5")
    assert run.returncode == 2
    assert "stepz" in run.stderr and "Did you mean" in run.stderr
    assert "Traceback" not in run.stderr
    run = _cli("tfmetanas.train", "--config=configs/no_such_config.py", f"--workdir={tmp_path}")
    assert run.returncode == 2 and "no_such_config.py" in run.stderr
    assert "Traceback" not in run.stderr
    run = _cli("tfmetanas.train", "--config=configs/quickstart.py", f"--workdir={tmp_path}",
               "--config.meta.algorithm=mamll", "--config.train.steps=1")
    assert run.returncode == 2
    assert "mamll" in run.stderr and "reptile" in run.stderr
    run = _cli("tfmetanas.evaluate", f"--workdir={tmp_path / 'nothing'}")
    assert run.returncode == 2 and "no config.json" in run.stderr


def test_train_on_real_omniglot(tmp_path):
    root = os.environ.get("TFMETANAS_DATA_DIR", "")
    if not root:
        pytest.skip("TFMETANAS_DATA_DIR is not set: real Omniglot needs ../shared/data.")
    config = tiny_config(steps=2, **{"data.source": "omniglot", "data.image_size": 28})
    config.data.split_scheme = "vinyals"
    config.data.rotations = True
    summary = trainer.train(config, str(tmp_path / "omniglot"))
    assert summary["num_tasks"] == 4 and 0.0 <= summary["accuracy_mean"] <= 100.0


def test_train_on_tfds_omniglot_offline(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from tfmetanas.data import omniglot

    monkeypatch.setenv("TFMETANAS_CACHE_DIR", str(tmp_path / "cache"))

    def as_dataset(self, split, **kwargs):
        del self, kwargs
        # Classes repeat (5 drawers each); TFDS' own splits are not few-shot
        # splits, so the loader splits the classes itself.
        rng = np.random.default_rng(0 if split == "train" else 1)
        labels = np.repeat(np.arange(12) if split == "train" else np.arange(12, 18), 5)
        return tf.data.Dataset.from_tensor_slices({
            "image": rng.integers(0, 2, (labels.size, 105, 105, 3)).astype(np.uint8) * 255,
            "label": labels,
            "alphabet": labels // 3,
            "alphabet_char_id": labels % 3,
        })

    omniglot._tfds_load.cache_clear()
    config = tiny_config(steps=2, **{"data.source": "omniglot_tfds"})
    config.data.split_scheme = "lake"
    config.data.ways, config.data.rotations = 2, False
    try:
        with tfds.testing.mock_data(as_dataset_fn=as_dataset):
            summary = trainer.train(config, str(tmp_path / "tfds"))
    finally:
        omniglot._tfds_load.cache_clear()
    assert 0.0 <= summary["accuracy_mean"] <= 100.0


def test_a_failed_run_leaves_the_workdir_as_it_was(tmp_path):
    workdir = str(tmp_path / "run")
    trainer.train(tiny_config(steps=1), workdir)
    path = os.path.join(workdir, "config.json")
    before = open(path).read()
    # A resumable key with a value refused once the run is set up: config.json is
    # not rewritten with it.
    bad = tiny_config(steps=2, **{"meta.parallel_tasks": 0})
    with pytest.raises(errors.TFMetaNASError):
        trainer.train(bad, workdir)
    assert open(path).read() == before
    # Without config.json, a checkpoint of another model is refused, and nothing is written.
    os.remove(path)
    with pytest.raises(errors.CheckpointError, match="could not be restored"):
        trainer.train(tiny_config(steps=2, **{"model.filters": 8}), workdir)
    assert not os.path.exists(path)
    # A new workdir whose run fails is not created.
    with pytest.raises(errors.TFMetaNASError):
        trainer.train(bad, str(tmp_path / "new"))
    assert not os.path.exists(tmp_path / "new")


def test_corrupt_workdir_files_are_clear_errors(tmp_path):
    from tfmetanas.experiment import workdir as workdir_lib

    workdir = str(tmp_path / "run")
    trainer.train(tiny_config(steps=1), workdir)
    path = os.path.join(workdir, "config.json")
    good = open(path).read()
    for text in (good[: len(good) // 2], "[1]", '{"train": {}}'):
        with open(path, "w") as f:
            f.write(text)
        with pytest.raises(errors.CheckpointError, match="config.json"):
            workdir_lib.load_config(workdir)
        with pytest.raises(errors.CheckpointError, match="config.json"):
            trainer.train(tiny_config(steps=2), workdir)
    with open(path, "w") as f:
        f.write(good)
    # An empty checkpoint state file.
    open(os.path.join(workdir, "checkpoints", "checkpoint"), "w").close()
    with pytest.raises(errors.CheckpointError, match="state file"):
        evaluate.evaluate_workdir(workdir, checkpoint="latest")


def test_a_key_added_since_the_run_does_not_block_resuming(tmp_path):
    from tfmetanas.experiment import workdir as workdir_lib

    workdir = str(tmp_path / "run")
    trainer.train(tiny_config(steps=1), workdir)
    path = os.path.join(workdir, "config.json")
    old = json.load(open(path))
    del old["data"]["split_scheme"]  # as written by a version without the key
    json.dump(old, open(path, "w"))
    workdir_lib.prepare_workdir(workdir, tiny_config(steps=2), write=False)
    with pytest.raises(errors.CheckpointError, match="model.filters"):
        workdir_lib.prepare_workdir(workdir, tiny_config(steps=2, **{"model.filters": 8}),
                                    write=False)


def test_evaluate_refuses_bad_counts(tmp_path):
    from tfmetanas.experiment import ensemble

    workdir = str(tmp_path / "run")
    config = tiny_config(steps=2)
    config.train.eval_every = 1
    trainer.train(config, workdir)
    for k in (0, -1):
        with pytest.raises(errors.ConfigError, match="--k"):
            ensemble.evaluate_ensemble(workdir, num_tasks=2, k=k)
    with pytest.raises(errors.ConfigError, match="--num_tasks"):
        evaluate.evaluate_workdir(workdir, num_tasks=0)


def test_a_workdir_with_only_best_checkpoints(tmp_path):
    # E.g. a run shared with its best checkpoints only: --checkpoint=best evaluates,
    # --checkpoint=latest says what there is instead of "train first".
    workdir = str(tmp_path / "run")
    config = tiny_config(steps=2)
    config.train.eval_every = 1
    trainer.train(config, workdir)
    directory = os.path.join(workdir, "checkpoints")
    for name in os.listdir(directory):
        if name != "best":
            os.remove(os.path.join(directory, name))
    result = evaluate.evaluate_workdir(workdir, num_tasks=2, checkpoint="best")
    assert "/best/" in result["checkpoint_path"].replace(os.sep, "/")
    # Nor does a corrupt state file of the latest ones stand in the way of the best.
    open(os.path.join(directory, "checkpoint"), "w").close()
    evaluate.evaluate_workdir(workdir, num_tasks=2, checkpoint="best")
    with pytest.raises(errors.CheckpointError, match="state file"):
        evaluate.evaluate_workdir(workdir, num_tasks=2, checkpoint="latest")
    os.remove(os.path.join(directory, "checkpoint"))
    with pytest.raises(errors.CheckpointError, match="--checkpoint=best"):
        evaluate.evaluate_workdir(workdir, num_tasks=2, checkpoint="latest")
    shutil.rmtree(os.path.join(directory, "best"))
    for which in ("best", "latest"):
        with pytest.raises(errors.CheckpointError, match="train first"):
            evaluate.evaluate_workdir(workdir, num_tasks=2, checkpoint=which)


def test_search_cli_errors_are_one_line(tmp_path):
    run = _cli("tfmetanas.search", "--config=configs/nb201/spos.py", f"--workdir={tmp_path / 'w'}",
               "--config.train.strategy=foo")
    assert run.returncode == 2, run.stderr[-2000:]
    assert "tfmetanas-search: error:" in run.stderr and "Traceback" not in run.stderr
    run = _cli("tfmetanas.search", "--config=configs/nb201/spos.py", f"--workdir={tmp_path / 'w'}",
               "--stages=")
    assert run.returncode != 0 and "--stages" in run.stderr
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("key, value", [
    ("train.eval_every", -1), ("train.log_every", -1), ("train.checkpoint_every", -1),
    ("train.keep_best", -1), ("train.time_limit_minutes", -1), ("train.seed", -1),
    ("inner.steps", 0), ("inner.eval_steps", 0), ("eval.num_tasks", 0),
    ("eval.num_val_tasks", 0), ("data.image_size", 0), ("model.filters", 0),
    ("model.downsample", "foo"), ("model.activation", "foo"),
])
def test_impossible_values_are_refused_before_the_workdir(tmp_path, key, value):
    workdir = tmp_path / "run"
    with pytest.raises(errors.ConfigError, match=key.split(".")[1]):
        trainer.train(tiny_config(steps=1, **{key: value}), str(workdir))
    assert not workdir.exists()
