r"""Standalone training of sampled architectures: reference accuracies for ranking.

SUMNAS (Ha et al., ICLR 2022, Section 5.1) ranks supernet predictions against
the accuracies of sub-models trained from scratch. Where no benchmark table
exists (glyphs, Omniglot, MobileNet space), this tool trains each sampled
architecture standalone (a fresh supernet of which only the chosen path is
used: SPOS steps with a fixed arch), on the same data as `tfmetanas.search`,
for several seeds, and writes ``{"archs": [{"arch", "accuracies",
"accuracy_mean"}]}`` to JSON for ``--config.search.rank.reference=<json>``.

  python tools/standalone_reference.py --config=configs/nb201/sumnas.py \
    --out=/tmp/reference.json --num_archs=20 --seeds=3 --steps=500
"""

import gc

import numpy as np
import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags

from tfmetanas import search
from tfmetanas.experiment import workdir as workdir_lib
from tfmetanas.meta import sumnas
from tfmetanas.models import params as params_lib
from tfmetanas.nas import supernet as sn
from tfmetanas.nas import supervised_data

config_flags.DEFINE_config_file("config", None, "Search config.", lock_config=True)
flags.DEFINE_string("out", None, "Output JSON.")
flags.DEFINE_integer("num_archs", 20, "Architectures to train.")
flags.DEFINE_integer("seeds", 3, "Seeds per architecture.")
flags.DEFINE_integer("steps", 500, "SGD steps per run.")
flags.DEFINE_float("learning_rate", 0.05, "SGD learning rate (cosine).")
FLAGS = flags.FLAGS


def train_standalone(config, data, arch, seed, steps, learning_rate):
    """Validation accuracy of `arch` trained alone from scratch."""
    tf.keras.utils.set_random_seed(seed)
    model = search.SPACES.get(config.model.space)(config, data.num_classes, data.image_shape[-1])
    fm = params_lib.FunctionalModel(model)
    rule = sumnas.SupernetTrainer(model, "spos", learning_rate=learning_rate, total_steps=steps,
                                  momentum=0.9, weight_decay=5e-4).outer_rule
    arch_t = tf.constant(arch, tf.int32)

    step_fn = sn.fixed_arch_train_step(fm, rule)

    rule_state = rule.init(fm.params("weights"))
    for step in range(steps):
        images, labels = data.batch(step + 1000 * seed, int(config.train.batch_size))
        _, rule_state = step_fn(tf.constant(step), images, labels, arch_t, rule_state)
    evaluator = sn.SubmodelEvaluator(model, [], data.val_pixels, data.val_labels)
    accuracy = evaluator.score(arch)[0]  # running BN statistics of the standalone run
    # Each run's graphs would otherwise stay for the whole study (compiled.Step).
    step_fn.release()
    evaluator.release()
    gc.collect()  # The graphs hold reference cycles.
    return accuracy


def main(argv):
    del argv
    config = FLAGS.config
    data = supervised_data.SupervisedArrays(
        supervised_data.load_class_arrays(config.data, config.train.seed),
        int(config.data.val_per_class), seed=config.train.seed)
    probe = search.SPACES.get(config.model.space)(config, data.num_classes, data.image_shape[-1])
    archs = sn.sample_archs(FLAGS.num_archs, probe.num_layers, probe.num_choices,
                            seed=int(config.search.rank.seed))
    entries = []
    for arch in archs:
        accs = [train_standalone(config, data, tuple(int(a) for a in arch), s, FLAGS.steps,
                                 FLAGS.learning_rate) for s in range(FLAGS.seeds)]
        entries.append({"arch": [int(a) for a in arch], "accuracies": accs,
                        "accuracy_mean": float(np.mean(accs))})
        print(entries[-1], flush=True)
    workdir_lib.write_json_atomic(FLAGS.out, {"archs": entries, "steps": FLAGS.steps,
                                              "seeds": FLAGS.seeds})


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "out"])
    from tfmetanas import cli

    app.run(cli.app_main(main), flags_parser=cli.flags_parser())
