"""Export of adapted task networks: round trips, equivalence, bad input, CLI.

The reloaded SavedModel is run in a subprocess that never imports tfmetanas, on
raw PNG files of another size and channel count than training.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfmetanas import errors
from tfmetanas.data.preprocess import preprocess_images
from tfmetanas.experiment import defaults, trainer
from tfmetanas.experiment import export as export_lib
from tfmetanas.experiment import workdir as workdir_lib
from tfmetanas.models import params as params_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = ("b_circle", "a_square", "c_star")  # Not in sorted order on purpose.


def tiny_config(steps=1, **overrides):
    """A glyphs 3-way 1-shot run small enough for a unit test (as train_test.py's)."""
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
    config.eval.num_tasks = 2
    config.eval.num_val_tasks = 2
    config.eval.batch_size = 2
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    return config


def mamlpp_config():
    """Per-step BN statistics and weights, running BN mode (MAML++-like)."""
    config = tiny_config(**{"inner.steps": 2, "inner.eval_steps": 3, "inner.bn_mode": "running"})
    config.model.bn.num_steps = config.inner.steps
    config.model.bn.per_step_stats = True
    config.model.bn.per_step_affine = True
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two trained workdirs, trained once for the whole module."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, config in (("maml", tiny_config()), ("mamlpp", mamlpp_config())):
        workdir = str(root / name)
        trainer.train(config, workdir)
        out[name] = (workdir, config)
    return out


def write_support(root, classes=CLASSES, per_class=2, size=(40, 40), mode="RGB", seed=0):
    """Writes PNG support images: one folder per class, blobs at class-specific places."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for k in range(per_class):
            image = rng.integers(0, 40, (*size, 3), dtype=np.uint8)
            y, x = (c * size[0]) // len(classes), (k * size[1]) // (2 * per_class)
            image[y : y + size[0] // 3, x : x + size[1] // 2] = 255
            Image.fromarray(image).convert(mode).save(os.path.join(root, name, f"{k}.png"))
    return str(root)


def write_queries(root, count=5, size=(40, 40), seed=1):
    """Raw RGB PNG files of another size than training (14x14 gray)."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = os.path.join(root, f"q{i}.png")
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


# Runs in a fresh interpreter that must not import tfmetanas: decodes the PNGs
# with TensorFlow and calls the signature.
_RELOAD = r"""
import json, sys
import numpy as np
import tensorflow as tf
export_dir, paths = sys.argv[1], sys.argv[2:]
loaded = tf.saved_model.load(export_dir)
serve = loaded.signatures["serving_default"]
images = tf.stack([tf.io.decode_png(tf.io.read_file(p), channels=3) for p in paths])
out = serve(images=images)
one_gray = serve(images=tf.image.rgb_to_grayscale(images[:1]))
print(json.dumps({
    "tfmetanas_imported": "tfmetanas" in sys.modules,
    "inputs": sorted(serve.structured_input_signature[1]),
    "outputs": sorted(out),
    "probabilities": out["probabilities"].numpy().tolist(),
    "class_ids": out["class_ids"].numpy().tolist(),
    "gray_shape": list(one_gray["logits"].shape),
    "variable_count": int(sum(int(np.prod(v.shape)) for v in loaded.model_variables)),
}))
"""


def reload_in_subprocess(export_dir, paths):
    run = subprocess.run(
        [sys.executable, "-c", _RELOAD, export_dir, *paths],
        cwd="/",  # Not the checkout: tfmetanas must not even be importable by accident.
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def read_pngs(paths):
    return np.stack([np.asarray(Image.open(p).convert("RGB"), np.uint8) for p in paths])


def adapt_independently(workdir, config, support_dir):
    """The run's own adaptation, independently of the export code.

    Returns:
      ``(forward, support_x, meta-model)`` with ``forward(x)`` the fast-weights
      logits: with running BN the adapted weights and BN state in inference
      form; with transductive BN in training form (batch statistics of x).
    """
    exp = trainer.Experiment(config, splits=("train",))
    workdir_lib.restore(workdir, exp.checkpoint, "best")
    support_x, support_y, _, _ = export_lib.load_support_folder(
        support_dir, exp.sources["train"].preprocess_spec
    )
    task = {
        "support_x": support_x,
        "support_y": support_y,
        "query_x": support_x,
        "query_y": support_y,
    }
    result = exp.algorithm.test_adapt(task)
    fmodel = params_lib.FunctionalModel(exp.model)
    step = exp.algorithm.eval_steps - 1
    training = config.inner.bn_mode == "transductive"

    def forward(x):
        logits, _ = fmodel(result.params, result.state, x, training=training, step=step)
        return logits.numpy()

    return forward, support_x, exp.model


@pytest.mark.parametrize("run_name", ["maml", "mamlpp"])
def test_round_trip(runs, run_name, tmp_path):
    workdir, config = runs[run_name]
    support_dir = write_support(tmp_path / "support")
    adapted = export_lib.adapt_and_build(workdir, support_dir)
    assert adapted.class_names == sorted(CLASSES)
    paths = write_queries(str(tmp_path / "queries"))
    queries = read_pngs(paths)

    # The in-memory discrete model equals the fast-weights forward pass. With
    # transductive BN that pass uses batch statistics, so it is compared on the
    # support set, whose statistics the discrete model holds.
    forward, support_x, meta_model = adapt_independently(workdir, config, support_dir)
    x = support_x
    if config.inner.bn_mode == "running":
        x = np.concatenate([support_x, preprocess_images(queries, adapted.preprocess_spec)])
    np.testing.assert_allclose(adapted.keras_model(x).numpy(), forward(x), atol=2e-5, rtol=1e-5)

    # Parameter count: the scalars of the discrete model's variables; per-step
    # BN tables are down to the one row the adapted network uses.
    count = sum(v.numpy().size for v in adapted.keras_model.weights)
    assert adapted.param_count == count == adapted.info["param_count"]
    meta_count = sum(v.numpy().size for v in meta_model.weights)
    if config.model.bn.per_step_stats:
        assert count < meta_count
    else:
        assert count == meta_count

    export_dir = str(tmp_path / "served")
    adapted.export(export_dir)
    with open(os.path.join(export_dir, "assets", "labels.txt")) as f:
        labels = f.read().splitlines()
    assert labels == sorted(CLASSES)
    info = json.load(open(os.path.join(export_dir, "adaptation.json")))
    assert info["support_size"] == 6 and info["steps"] == config.inner.eval_steps
    assert info["param_count"] == count and info["genotype"] is None
    assert info["bn"]["mode"] == config.inner.bn_mode
    assert info["class_names"] == labels == adapted.class_names
    assert info["source_workdir"] == os.path.abspath(workdir)
    assert os.path.basename(info["checkpoint_path"]).startswith("ckpt")
    # No trace of the package in the graph: it reloads from plain TensorFlow.
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        assert b"tfmetanas" not in f.read()

    in_memory = adapted.predict(queries)
    reloaded = reload_in_subprocess(export_dir, paths)
    assert reloaded["tfmetanas_imported"] is False
    assert reloaded["inputs"] == ["images"]
    assert reloaded["outputs"] == ["class_ids", "logits", "probabilities"]
    np.testing.assert_allclose(reloaded["probabilities"], in_memory["probabilities"], atol=1e-6)
    assert reloaded["class_ids"] == in_memory["class_ids"].tolist()
    assert reloaded["class_ids"] == np.argmax(in_memory["probabilities"], -1).tolist()
    assert reloaded["gray_shape"] == [1, 3]
    assert reloaded["variable_count"] == count
    # labels.txt order is the class-id order: the support set's own labels.
    expected_ids = np.argmax(adapted.keras_model(support_x).numpy(), -1)
    support_paths = [
        os.path.join(support_dir, c, f)
        for c in labels
        for f in sorted(os.listdir(os.path.join(support_dir, c)))
    ]
    assert adapted.predict(read_pngs(support_paths))["class_ids"].tolist() == expected_ids.tolist()


def test_metanas_search_network_prunes_and_round_trips(tmp_path):
    from tfmetanas.nas import darts

    if not hasattr(darts, "discrete_from_search"):
        pytest.skip("tfmetanas.nas.darts has no discrete_from_search yet.")
    keras_seed = 3
    tf.keras.utils.set_random_seed(keras_seed)
    model = darts.SearchNetwork(
        3, channels=4, num_cells=2, reduction_cells=(1,), num_nodes=2, stem_multiplier=1
    )
    model(tf.zeros((2, 14, 14, 1)))
    fmodel = params_lib.FunctionalModel(model)
    rng = np.random.default_rng(0)
    # An "adapted" architecture: peaked logits, so hard pruning drops ops and
    # subsets whose weights are below the threshold.
    values = {
        path: tf.constant(rng.normal(0, 4, v.shape).astype(np.float32))
        if fmodel.group_of[path] == "arch"
        else v
        for path, v in fmodel.params().items()
    }
    support_dir = write_support(tmp_path / "support", mode="L")
    spec = {
        "height": 14,
        "width": 14,
        "channels": 1,
        "invert": False,
        "resize": "bilinear_antialias",
    }
    support_x, _, names, _ = export_lib.load_support_folder(support_dir, spec)
    _, state = fmodel(values, None, support_x, training=True, temperature=1.0)
    values.update(state)
    kwargs = {"temperature": 1.0}

    running = export_lib.build_discrete(
        model, values, kwargs, export_lib.BNChoice("running", support_x), (14, 14, 1)
    )
    assert running.genotype is not None
    x = support_x[::-1]
    expected, _ = fmodel(values, state, x, training=False, temperature=1.0)
    np.testing.assert_allclose(running.keras_model(x, training=False), expected, atol=1e-5)
    search_count = darts.count_params(model) - sum(v.numpy().size for v in fmodel.variables("arch"))
    assert darts.count_params(running.keras_model) <= search_count

    transductive = export_lib.build_discrete(
        model, values, kwargs, export_lib.BNChoice("transductive", support_x), (14, 14, 1)
    )
    expected, _ = fmodel(values, state, support_x, training=True, temperature=1.0)
    np.testing.assert_allclose(
        transductive.keras_model(support_x, training=False), expected, atol=1e-4
    )

    keras_model = running.keras_model
    adapted = export_lib.AdaptedModel(
        keras_model=keras_model,
        class_names=names,
        preprocess_spec=spec,
        param_count=export_lib.count_variables(keras_model),
        trainable_param_count=darts.count_params(keras_model),
        genotype=running.genotype,
        info={"genotype": running.genotype.to_dict()},
    )
    export_dir = str(tmp_path / "served")
    adapted.export(export_dir)
    info = json.load(open(os.path.join(export_dir, "adaptation.json")))
    assert info["genotype"]["strategy"] == "ops_and_inputs"
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        assert b"tfmetanas" not in f.read()
    paths = write_queries(str(tmp_path / "queries"), count=3)
    reloaded = reload_in_subprocess(export_dir, paths)
    assert reloaded["tfmetanas_imported"] is False
    np.testing.assert_allclose(
        reloaded["probabilities"], adapted.predict(read_pngs(paths))["probabilities"], atol=1e-6
    )
    assert reloaded["variable_count"] == adapted.param_count


def test_bad_support_folders(runs, tmp_path):
    workdir, _ = runs["maml"]
    empty_root = tmp_path / "none"
    empty_root.mkdir()
    with pytest.raises(errors.ExportError, match="no class sub-folders"):
        export_lib.adapt_and_build(workdir, str(empty_root))
    with pytest.raises(errors.ExportError, match="does not exist"):
        export_lib.adapt_and_build(workdir, str(tmp_path / "missing"))

    support = write_support(tmp_path / "empty_class")
    os.makedirs(os.path.join(support, "d_empty"))
    with open(os.path.join(support, "d_empty", "notes.txt"), "w") as f:
        f.write("not an image")
    with pytest.raises(errors.ExportError, match="d_empty"):
        export_lib.adapt_and_build(workdir, support)

    support = write_support(tmp_path / "broken")
    broken = os.path.join(support, "a_square", "broken.png")
    with open(broken, "wb") as f:
        f.write(b"\x89PNG not really")
    with pytest.raises(errors.ExportError, match="broken.png"):
        export_lib.adapt_and_build(workdir, support)

    support = write_support(tmp_path / "two", classes=("x", "y"))
    with pytest.raises(errors.ExportError, match="3-way.*2 class"):
        export_lib.adapt_and_build(workdir, support)


def test_workdir_without_checkpoint(runs, tmp_path):
    support = write_support(tmp_path / "support")
    with pytest.raises(errors.CheckpointError, match="no config.json"):
        export_lib.adapt_and_build(str(tmp_path / "nowhere"), support)
    workdir = tmp_path / "fresh"
    workdir.mkdir()
    src, _ = runs["maml"]
    with open(os.path.join(src, "config.json")) as f:
        (workdir / "config.json").write_text(f.read())
    with pytest.raises(errors.CheckpointError, match="No checkpoint"):
        export_lib.adapt_and_build(str(workdir), support)


def test_existing_export_dir_and_atomic_write(runs, tmp_path, monkeypatch):
    workdir, _ = runs["maml"]
    support = write_support(tmp_path / "support")
    out = tmp_path / "served"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(errors.ExportError, match="already exists.*--overwrite"):
        export_lib.export_workdir(workdir, support, str(out))
    assert (out / "keep.txt").read_text() == "precious"
    with pytest.raises(errors.ExportError, match="workdir"):
        export_lib.export_workdir(workdir, support, workdir, overwrite=True)

    adapted = export_lib.adapt_and_build(workdir, support, checkpoint="latest", steps=1)
    assert adapted.info["steps"] == 1 and adapted.info["checkpoint"] == "latest"

    # A failure while writing leaves neither the target nor temporary directories.
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", fail)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="disk full"):
        adapted.export(str(fresh))
    assert not fresh.exists()
    with pytest.raises(RuntimeError, match="disk full"):
        adapted.export(str(out), overwrite=True)
    assert (out / "keep.txt").read_text() == "precious"
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served", "support"]

    adapted.export(str(out), overwrite=True)
    assert not (out / "keep.txt").exists()
    assert json.load(open(out / "adaptation.json"))["steps"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served", "support"]


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "tfmetanas.export", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def test_cli(runs, tmp_path):
    workdir, _ = runs["maml"]
    support = write_support(tmp_path / "support")
    out = str(tmp_path / "served")
    flags = [f"--workdir={workdir}", f"--support_dir={support}", f"--export_dir={out}"]
    run = _cli(*flags, "--checkpoint=latest")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "exported 3-way conv4" in run.stdout
    assert open(os.path.join(out, "assets", "labels.txt")).read().split() == sorted(CLASSES)
    run = _cli(*flags)
    assert run.returncode == 2
    assert "tfmetanas-export: error:" in run.stderr and "already exists" in run.stderr


def test_an_empty_export_dir_is_refused(tmp_path, monkeypatch):
    # os.path.abspath("") is the current directory, which --overwrite would replace.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "marker.txt").write_text("keep")
    for empty in ("", "  "):
        with pytest.raises(errors.ExportError, match="empty"):
            export_lib.check_export_dir(empty, overwrite=True)
    assert (tmp_path / "marker.txt").read_text() == "keep"
