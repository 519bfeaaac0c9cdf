r"""Ranking study at CPU scale (SUMNAS, Ha et al., ICLR 2022, Table 4) on Omniglot.

How well does a weight-sharing supernet rank NAS-Bench-201 cells? Three parts,
each writing JSON under ``--out_dir`` (parts can run in parallel processes):

1. ``reference``: ``--num_archs`` cells, sampled uniformly (``sn.sample_archs``
   with ``search.rank.seed``, the same list the ``rank`` stage of
   ``tfmetanas.search`` samples), each trained standalone from scratch on the
   same data and image size as the supernets; one seed per call
   (``reference_seed<S>.json``). Within a seed every cell starts from the same
   initial weights and sees the same batches (common random numbers).
2. ``supernet``: for each k in ``--k``, a supernet trained with SUMNAS with k
   inner steps (k = 1 *is* FairNAS, tested in tests/nas/sumnas_test.py) for
   ``--steps`` outer steps (the same batches for every k), then the ``rank``
   stage: BN recalibration and validation accuracy of the same cells
   (``supernet_k<K>_seed<S>/rank.json``), via ``tfmetanas.search.search``.
3. ``table``: Kendall tau (Appendix B, tau-a; also tau-b) and Spearman rho of
   every supernet against the reference accuracies averaged over reference
   seeds, per strategy and seed, mean and spread; the agreement between
   reference seeds; writes ``table.json`` and ``reference.json`` (the
   averaged reference, usable as ``--config.search.rank.reference``).

Data: Omniglot characters as one many-class classification task (the first
``--num_classes`` characters of the Lake background split, drawers 1-15 for
training, 16-20 for validation), resized to ``--image_size``.

  export TFMETANAS_DATA_DIR=../shared/data TFMETANAS_CACHE_DIR=/tmp/cache
  python tools/ranking_study.py reference --out_dir=/tmp/rank --seed=0
  python tools/ranking_study.py reference --out_dir=/tmp/rank --seed=1
  python tools/ranking_study.py supernet --out_dir=/tmp/rank --seed=0 --k=1,2,3,4
  python tools/ranking_study.py supernet --out_dir=/tmp/rank --seed=1 --k=1,2,3,4
  python tools/ranking_study.py table --out_dir=/tmp/rank
"""

import glob
import importlib.util
import json
import os
import sys
import time
import types

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("reference", "supernet", "table")

flags.DEFINE_string("out_dir", None, "Where every part reads and writes its JSON.")
flags.DEFINE_integer("seed", 0, "reference/supernet seed.")
flags.DEFINE_string("k", "1,2,3,4", "SUMNAS inner steps (1 = FairNAS); 0 / 0sum: FairNAS with "
                    "its own recipe, gradients averaged / summed.")
flags.DEFINE_integer("num_archs", 30, "Cells ranked.")
flags.DEFINE_integer("arch_seed", 1, "search.rank.seed.")
flags.DEFINE_integer("image_size", 16, "Image size (pixels).")
flags.DEFINE_integer("num_classes", 100, "Omniglot characters of the classification task.")
flags.DEFINE_integer("val_per_class", 5, "Validation images per class.")
flags.DEFINE_integer("channels", 8, "NB201 C.")
flags.DEFINE_integer("cells_per_stage", 1, "NB201 N.")
flags.DEFINE_integer("batch_size", 32, "Images per step.")
flags.DEFINE_integer("steps", 400, "Supernet outer steps.")
flags.DEFINE_integer("ref_steps", 400, "Standalone SGD steps.")
flags.DEFINE_float("ref_learning_rate", 0.05, "Standalone SGD learning rate.")
flags.DEFINE_integer("calibration_batches", 4, "BN recalibration batches of the rank stage.")
flags.DEFINE_integer("threads", 2, "TF intra-op threads (0: TF's).")
flags.mark_flag_as_required("out_dir")
FLAGS = flags.FLAGS

STRATEGY_NAMES = {"0": "FairNAS-own", "0sum": "FairNAS-own-sum", "1": "FairNAS"}


def study_config(args, k="1", seed=0):
    """The search config of the study (configs/nb201/sumnas.py + the study's sizes).

    `k` is a variant label: "1".."4" SUMNAS inner steps (1 = FairNAS), "0"
    FairNAS with its own recipe and averaged gradients, "0sum" the same with
    summed gradients (PyTorch FairNAS accumulates the m backward passes).
    """
    fair = str(k).startswith("0")
    reduction = "sum" if str(k).endswith("sum") else "mean"
    k = 1 if fair else int(k)
    # k = 0: FairNAS with its own recipe (configs/nb201/fairnas.py: SGD lr
    # 0.025, momentum 0.9, weight decay 5e-4) rather than SUMNAS' k = 1.
    name = "fairnas" if fair else "sumnas"
    spec = importlib.util.spec_from_file_location(
        f"nb201_{name}", os.path.join(ROOT, "configs", "nb201", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data.source = "omniglot"
    config.data.split_scheme = "lake"
    config.data.image_size = args.image_size
    config.data.num_classes = args.num_classes
    config.data.val_per_class = args.val_per_class
    config.model.channels = args.channels
    config.model.cells_per_stage = args.cells_per_stage
    config.train.strategy = "fairnas" if fair else "sumnas"  # k = 1 is FairNAS
    config.train.inner_steps = k
    config.train.fair_reduction = reduction
    config.train.seed = seed
    config.train.steps = args.steps
    config.train.batch_size = args.batch_size
    config.train.log_every = 50
    config.train.eval_every = args.steps
    config.train.checkpoint_every = 200
    config.search.rank.num_archs = args.num_archs
    config.search.rank.seed = args.arch_seed
    config.search.rank.calibration_batches = args.calibration_batches
    config.search.rank.reference = "none"  # correlations are computed by `table`
    return config


def _data(config):
    from tfmetanas.nas import supervised_data

    # The arrays and the train/val split do not depend on the seed; only the
    # batch stream (seeded per run below) does.
    return supervised_data.SupervisedArrays(
        supervised_data.load_class_arrays(config.data, 0), int(config.data.val_per_class),
        seed=int(config.train.seed))


class StandaloneTrainer:
    """Trains single cells from scratch; one model and one traced step per seed.

    The supernet is built once; every cell restarts from its initial values
    (weights and BN statistics) and only its own path is used (``arch`` is a
    tensor, so the step is traced once). SGD with momentum 0.9, weight decay
    5e-4 and a cosine learning rate, as NAS-Bench-201 trains its cells.
    """

    def __init__(self, config, data, seed, steps, learning_rate):
        import tensorflow as tf

        from tfmetanas import search
        from tfmetanas.meta import rules, sumnas
        from tfmetanas.models import params as params_lib
        from tfmetanas.nas import supernet as sn

        tf.keras.utils.set_random_seed(seed)
        self.tf, self.data, self.seed, self.steps = tf, data, int(seed), int(steps)
        self.batch_size = int(config.train.batch_size)
        self.model = search.SPACES.get("nb201")(config, data.num_classes, data.image_shape[-1])
        self.fm = fm = params_lib.FunctionalModel(self.model)
        self.initial = [v.numpy() for v in self.model.variables]
        self.rule = rule = rules.SGD(sumnas.cosine_schedule(learning_rate, steps), momentum=0.9,
                                     weight_decay=5e-4)
        r = config.search.rank
        self.evaluator = sn.SubmodelEvaluator(
            self.model, data.calibration_batches(r.calibration_batches, r.calibration_batch_size),
            data.val_pixels, data.val_labels, batch_size=r.eval_batch_size)

        self._step = sn.fixed_arch_train_step(fm, rule)

    def run(self, arch):
        """``{"accuracy", "accuracy_running_bn", "loss", "train_loss"}`` of `arch`."""
        tf = self.tf
        for v, value in zip(self.model.variables, self.initial):
            v.assign(value)
        rule_state = self.rule.init(self.fm.params("weights"))
        arch_t = tf.constant(arch, tf.int32)
        losses = []
        for step in range(self.steps):
            images, labels = self.data.batch(step + 100_000 * self.seed, self.batch_size)
            loss, rule_state = self._step(tf.constant(step), images, labels, arch_t, rule_state)
            if step >= self.steps - 50:
                losses.append(float(loss))
        running_accuracy, _ = self.evaluator.score(arch)  # running BN statistics
        result = self.evaluator.evaluate(arch)  # recalibrated, as the supernet's sub-models
        return {"accuracy": result["accuracy"], "loss": result["loss"],
                "accuracy_running_bn": running_accuracy, "train_loss": float(np.mean(losses))}


def _archs(config, num_layers=6, num_choices=5):
    from tfmetanas.nas import supernet as sn

    return sn.sample_archs(int(config.search.rank.num_archs), num_layers, num_choices,
                           seed=int(config.search.rank.seed))


def reference(args):
    from tfmetanas.experiment import workdir as workdir_lib
    from tfmetanas.nas import nb201

    config = study_config(args, seed=args.seed)
    data = _data(config)
    trainer = StandaloneTrainer(config, data, args.seed, args.ref_steps, args.ref_learning_rate)
    path = os.path.join(args.out_dir, f"reference_seed{args.seed}.json")
    out = {"seed": args.seed, "steps": args.ref_steps, "learning_rate": args.ref_learning_rate,
           "config": config.to_dict(), "archs": []}
    if os.path.exists(path):  # resume after an interruption
        with open(path) as f:
            out["archs"] = json.load(f)["archs"]
    done = {tuple(e["arch"]) for e in out["archs"]}
    for arch in _archs(config):
        arch = tuple(int(a) for a in arch)
        if arch in done:
            continue
        start = time.time()
        result = trainer.run(arch)
        out["archs"].append({"arch": list(arch), "arch_string": nb201.arch_to_string(arch),
                             "seconds": time.time() - start, **result})
        workdir_lib.write_json_atomic(path, out)
        print(f"reference seed {args.seed} {len(out['archs'])}/{args.num_archs} {arch} "
              f"acc {result['accuracy']:.4f} ({time.time() - start:.0f} s)", flush=True)


def supernet(args):
    from tfmetanas import search

    for k in args.k.split(","):
        config = study_config(args, k=k, seed=args.seed)
        workdir = os.path.join(args.out_dir, f"supernet_k{k}_seed{args.seed}")
        start = time.time()
        search.search(config, workdir, ["train", "rank"])
        seconds = time.time() - start
        with open(os.path.join(workdir, "timing.json"), "w") as f:
            json.dump({"train_and_rank_seconds": seconds}, f)
        print(f"supernet k={k} seed {args.seed}: {seconds:.0f} s", flush=True)


def _corr(predicted, true):
    from tfmetanas.nas import ranking

    return ranking.correlations(predicted, true)


def connected(arch):
    """Whether the cell's output node is reachable from its input through non-"none" edges.

    Other cells output zeros: every such network is the same constant-cell
    network (its accuracy comes from the reduction blocks and head alone).
    """
    from tfmetanas.nas import nb201

    reachable = {0}
    for (to, src), op in zip(nb201.EDGES, arch):
        if nb201.OPS[op] != "none" and src in reachable:
            reachable.add(to)
    return 3 in reachable


def _stats(values):
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1
            else 0.0, "min": float(values.min()), "max": float(values.max()),
            "n": int(values.size)}


def table(args):
    from tfmetanas.experiment import workdir as workdir_lib

    refs = []
    for path in sorted(glob.glob(os.path.join(args.out_dir, "reference_seed*.json"))):
        with open(path) as f:
            refs.append(json.load(f))
    if not refs:
        from tfmetanas import errors

        raise errors.DataError(
            f"No reference_seed*.json in {args.out_dir}: run the reference part first."
        )
    common = set.intersection(*[{tuple(e["arch"]) for e in r["archs"]} for r in refs])
    archs = [tuple(e["arch"]) for e in refs[0]["archs"] if tuple(e["arch"]) in common]
    per_seed = [{tuple(e["arch"]): e["accuracy"] for e in r["archs"]} for r in refs]
    ref_matrix = np.array([[s[a] for a in archs] for s in per_seed])  # [seeds, archs]
    ref_mean = ref_matrix.mean(0)
    out = {"num_archs": len(archs), "num_connected": sum(connected(a) for a in archs),
           "reference_seeds": [r["seed"] for r in refs],
           "reference": {"accuracy": _stats(ref_mean),
                         "std_over_seeds_mean": float(ref_matrix.std(0, ddof=1).mean())
                         if len(refs) > 1 else None,
                         "seed_agreement": [
                             {"seeds": [refs[i]["seed"], refs[j]["seed"]],
                              **_corr(ref_matrix[i], ref_matrix[j])}
                             for i in range(len(refs)) for j in range(i + 1, len(refs))]},
           "runs": [], "summary": {}}
    workdir_lib.write_json_atomic(os.path.join(args.out_dir, "reference.json"), {"archs": [
        {"arch": list(a), "accuracies": ref_matrix[:, i].tolist(),
         "accuracy_mean": float(ref_mean[i])} for i, a in enumerate(archs)]})
    # Training-free baseline: rank cells by their MACs (bigger = better).
    from tfmetanas.nas import flops

    data_config = refs[0]["config"]
    macs = [flops.nb201_cost(a, channels=data_config["model"]["channels"],
                             cells_per_stage=data_config["model"]["cells_per_stage"],
                             image_size=data_config["data"]["image_size"],
                             num_classes=data_config["data"]["num_classes"], in_channels=1).macs
            for a in archs]
    out["macs_baseline"] = _corr(macs, ref_mean)
    for path in sorted(glob.glob(os.path.join(args.out_dir, "supernet_k*_seed*", "rank.json"))):
        name = os.path.basename(os.path.dirname(path))
        k, seed = name[len("supernet_k"):].split("_seed")
        seed = int(seed)
        with open(path) as f:
            entries = {tuple(e["arch"]): e for e in json.load(f)["archs"]}
        pred = [entries[a]["accuracy"] for a in archs]
        # Near chance level, the validation loss separates sub-models finer than accuracy.
        neg_loss = [-entries[a]["loss"] for a in archs]
        keep = [i for i, a in enumerate(archs) if connected(a)]
        row = {"k": k, "seed": seed, "mean_predicted_accuracy": float(np.mean(pred)),
               **_corr(pred, ref_mean),
               "connected_only": _corr(np.take(pred, keep), ref_mean[keep]),
               "by_loss": _corr(neg_loss, ref_mean),
               "per_reference_seed_kendall_tau_a": [_corr(pred, m)["kendall_tau_a"]
                                                    for m in ref_matrix]}
        timing = os.path.join(os.path.dirname(path), "timing.json")
        if os.path.exists(timing):
            with open(timing) as f:
                row["seconds"] = json.load(f)["train_and_rank_seconds"]
        out["runs"].append(row)
    for k in sorted({r["k"] for r in out["runs"]}, key=lambda v: (len(v), v)):
        rows = [r for r in out["runs"] if r["k"] == k]
        out["summary"][f"k{k}"] = {key: _stats([r[key] for r in rows]) for key in
                                   ("kendall_tau_a", "kendall_tau_b", "spearman_rho")}
        out["summary"][f"k{k}"]["kendall_tau_a_by_loss"] = _stats(
            [r["by_loss"]["kendall_tau_a"] for r in rows])
    workdir_lib.write_json_atomic(os.path.join(args.out_dir, "table.json"), out)
    ref = out["reference"]
    print(f"{len(archs)} cells, {len(refs)} reference seeds; reference accuracy "
          f"{ref['accuracy']['min']:.3f}-{ref['accuracy']['max']:.3f} (mean "
          f"{ref['accuracy']['mean']:.3f}); seed-to-seed std {ref['std_over_seeds_mean']}")
    for agreement in ref["seed_agreement"]:
        print(f"reference seeds {agreement['seeds']}: tau_a {agreement['kendall_tau_a']:.3f} "
              f"rho {agreement['spearman_rho']:.3f}")
    print(f"{out['num_connected']} of {len(archs)} cells connect input to output")
    print(f"training-free baseline, rank by MACs: tau_a {out['macs_baseline']['kendall_tau_a']:.3f} "
          f"rho {out['macs_baseline']['spearman_rho']:.3f}")
    print(f"{'strategy':>15} {'seed':>4} {'tau_a':>7} {'tau_b':>7} {'rho':>7} "
          f"{'tau_a loss':>10} {'mean acc':>8}")
    for r in sorted(out["runs"], key=lambda r: (len(r["k"]) > 1, r["k"], r["seed"])):
        name = STRATEGY_NAMES.get(r["k"], f"SUMNAS k={r['k']}")
        print(f"{name:>15} {r['seed']:>4} {r['kendall_tau_a']:>7.3f} {r['kendall_tau_b']:>7.3f} "
              f"{r['spearman_rho']:>7.3f} "
              f"{r['by_loss']['kendall_tau_a']:>10.3f} {r['mean_predicted_accuracy']:>8.3f}")
    for key, s in out["summary"].items():
        print(f"{key}: tau_a {s['kendall_tau_a']['mean']:.3f} ± {s['kendall_tau_a']['std']:.3f}, "
              f"rho {s['spearman_rho']['mean']:.3f} ± {s['spearman_rho']['std']:.3f}, "
              f"tau_a by loss {s['kendall_tau_a_by_loss']['mean']:.3f} ± "
              f"{s['kendall_tau_a_by_loss']['std']:.3f} "
              f"(n={s['kendall_tau_a']['n']})")


def main(argv):
    parts = argv[1:]
    if len(parts) != 1 or parts[0] not in PARTS:
        raise app.UsageError(f"Name one part: {' | '.join(PARTS)}; got {parts}.")
    # Every flag this file defines, as the attributes the parts read.
    args = types.SimpleNamespace(**{
        f.name: f.value for f in FLAGS.get_flags_for_module(sys.modules[__name__])
    })
    os.makedirs(args.out_dir, exist_ok=True)
    if parts[0] != "table" and args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    {"reference": reference, "supernet": supernet, "table": table}[parts[0]](args)


if __name__ == "__main__":
    from tfmetanas import cli

    app.run(cli.app_main(main), flags_parser=cli.flags_parser())
