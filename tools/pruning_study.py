r"""METANAS Table 3 at CPU scale: accuracy before and after hard pruning.

One DARTS search (a single task: `--num_classes` classes of a data source,
each class's images split into train and held-out), architecture and weights
trained together on the same batches (single-level, first order, as METANAS'
task learner; Adam 1e-3 for the weights, Adam with weight decay 1e-3 for the
architecture), the temperature annealed linearly from `--t_max` to `--t_min`
over the search. Then the held-out accuracy of the one-shot model (at
`--t_min`) and of its hard-pruned network (`SearchNetwork(hard_prune=True)`:
threshold 0.01 for ``ops``/``ops_and_inputs``, DARTS' top-2 inputs and top op
for ``none``), without retraining, for each sparsify strategy and seed.

The paper (Elsken et al., CVPR 2020, Table 3, DARTS on CIFAR-10): none 87.9 ->
16.7, ops 84.4 -> 60.2, ops_and_inputs 84.8 -> 84.7.

  export TFMETANAS_DATA_DIR=../shared/data
  python tools/pruning_study.py --source=omniglot --num_classes=20 --steps=1500 \
      --seeds=0,1,2 --out=/tmp/pruning_study.json

BN: held-out images are scored with running statistics (``--bn=running``,
standard supervised evaluation) or batch statistics (``--bn=batch``).
"""

import json
import statistics
import time

import numpy as np
from absl import app, flags

_SOURCE = flags.DEFINE_string("source", "omniglot", "tfmetanas data source (or 'glyphs').")
_ROOT = flags.DEFINE_string("root", "", "Data directory ('' = $TFMETANAS_DATA_DIR).")
_CLASSES = flags.DEFINE_integer("num_classes", 20, "Classes of the single task.")
_VAL = flags.DEFINE_integer("val_per_class", 5, "Held-out images per class.")
_SIZE = flags.DEFINE_integer("image_size", 28, "Image size (pixels).")
_STRATEGIES = flags.DEFINE_list("strategies", ["none", "ops", "ops_and_inputs"], "Strategies.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (initialisation and batches).")
_STEPS = flags.DEFINE_integer("steps", 1500, "Search steps.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per step.")
_CHANNELS = flags.DEFINE_integer("channels", 12, "Channels C of the search network.")
_CELLS = flags.DEFINE_integer("num_cells", 3, "Cells.")
_REDUCTIONS = flags.DEFINE_list("reduction_cells", ["1", "2"], "Reduction cell indices.")
_NODES = flags.DEFINE_integer("num_nodes", 3, "Intermediate nodes per cell.")
_T_MAX = flags.DEFINE_float("t_max", 1.0, "Temperature at the first step.")
_T_MIN = flags.DEFINE_float("t_min", 0.1, "Temperature at the last step and for pruning.")
_W_LR = flags.DEFINE_float("weights_lr", 1e-3, "Adam lr of the weights.")
_A_LR = flags.DEFINE_float("arch_lr", 3e-3, "Adam lr of the architecture.")
_A_WD = flags.DEFINE_float("arch_weight_decay", 1e-3, "Architecture weight decay.")
_BN = flags.DEFINE_enum("bn", "running", ["running", "batch"], "BN statistics when scoring.")
_OUT = flags.DEFINE_string("out", None, "Write the JSON results here.")


def _accuracy(model, images, labels, training, **kwargs):
    correct = 0
    for start in range(0, len(labels), 100):
        logits = model(images[start:start + 100], training=training, **kwargs)
        correct += int(np.sum(np.argmax(logits.numpy(), -1) == labels[start:start + 100]))
    return 100.0 * correct / len(labels)


def run_one(data, strategy, seed):
    import keras
    import tensorflow as tf

    from tfmetanas.experiment import defaults
    from tfmetanas.models import params as params_lib
    from tfmetanas.models import zoo
    from tfmetanas.nas import darts

    model_config = defaults.base_config().model
    model_config.name = "darts"
    d = model_config.darts
    d.channels, d.num_cells, d.num_nodes = _CHANNELS.value, _CELLS.value, _NODES.value
    d.reduction_cells = tuple(int(r) for r in _REDUCTIONS.value)
    d.sparsify = strategy
    d.prune_threshold = 0.0  # soft pruning off in training (no tf.cond per op)
    model = zoo.build_model(model_config, data.image_shape, data.num_classes, seed=seed)
    arch = params_lib.FunctionalModel(model).variables("arch")
    arch_paths = {v.path for v in arch}
    weights = [v for v in model.trainable_variables if v.path not in arch_paths]
    w_opt = keras.optimizers.Adam(_W_LR.value, beta_1=0.0)
    a_opt = keras.optimizers.Adam(_A_LR.value, beta_1=0.0, weight_decay=None)
    wd = _A_WD.value

    @tf.function
    def step(x, y, temperature):
        with tf.GradientTape() as tape:
            logits = model(x, training=True, temperature=temperature)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        grads = tape.gradient(loss, weights + arch)
        w_opt.apply_gradients(zip(grads[:len(weights)], weights))
        # L2 weight decay on the architecture added to its gradient (PyTorch Adam).
        a_opt.apply_gradients(
            [(g + wd * v, v) for g, v in zip(grads[len(weights):], arch)])
        return loss

    t0 = time.time()
    steps = _STEPS.value
    for i in range(steps):
        tau = _T_MAX.value + (_T_MIN.value - _T_MAX.value) * i / max(steps - 1, 1)
        x, y = data.batch(i, _BATCH.value)
        loss = float(step(tf.constant(x), tf.constant(y), tf.constant(tau, tf.float32)))
        if i == 0:
            trace_seconds, t0 = time.time() - t0, time.time()
        if not np.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {i} ({strategy}, seed {seed})")
    seconds = time.time() - t0
    training = _BN.value == "batch"
    t_min = _T_MIN.value
    kept = model.genotype(temperature=t_min, threshold=model.hard_threshold)
    val_images = data.val_images  # converted from the kept uint8 pixels once
    before = _accuracy(model, val_images, data.val_labels, training, temperature=t_min)
    after = _accuracy(model, val_images, data.val_labels, training, temperature=t_min,
                      hard_prune=True)
    return {
        "strategy": strategy,
        "seed": seed,
        "before": before,
        "after": after,
        "train_loss": loss,
        "trace_seconds": round(trace_seconds, 1),
        "search_seconds": round(seconds, 1),
        "params_search": int(darts.count_params(model)),
        "params_pruned": int(model.pruned_param_count(kept)),
        "genotype": kept.to_dict(),
    }


def main(argv):
    del argv
    import os

    from tfmetanas.nas import supervised_data

    config = {
        "source": _SOURCE.value, "root": _ROOT.value or os.environ.get("TFMETANAS_DATA_DIR", ""),
        "image_size": _SIZE.value, "num_classes": _CLASSES.value, "split_scheme": "vinyals",
    }
    results = []
    for seed in (int(s) for s in _SEEDS.value):
        data = supervised_data.SupervisedArrays(
            supervised_data.load_class_arrays(config, seed), _VAL.value, seed=seed)
        for strategy in _STRATEGIES.value:
            r = run_one(data, strategy, seed)
            print(f"{strategy:15s} seed {seed}: before {r['before']:.1f}  after {r['after']:.1f}  "
                  f"params {r['params_search']} -> {r['params_pruned']}  (trace {r['trace_seconds']} s, "
                  f"search {r['search_seconds']} s)",
                  flush=True)
            results.append(r)
    summary = {}
    for strategy in _STRATEGIES.value:
        rows = [r for r in results if r["strategy"] == strategy]
        summary[strategy] = {
            k: {"mean": statistics.mean(r[k] for r in rows),
                "stdev": statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0}
            for k in ("before", "after")
        }
        print(f"{strategy:15s} before {summary[strategy]['before']['mean']:.1f} "
              f"± {summary[strategy]['before']['stdev']:.1f}  after "
              f"{summary[strategy]['after']['mean']:.1f} ± {summary[strategy]['after']['stdev']:.1f}")
    if _OUT.value:
        flags_used = {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(__file__)}
        with open(_OUT.value, "w") as f:
            json.dump({"flags": flags_used, "summary": summary, "runs": results}, f, indent=1)


if __name__ == "__main__":
    from tfmetanas import cli

    app.run(cli.app_main(main), flags_parser=cli.flags_parser())
