"""The keys every training config shares, with their defaults and units.

Config files start from `base_config()` and override what their paper says,
so that any run can be shortened or re-seeded the same way
(``--config.train.steps=100 --config.train.seed=1``).
"""

import importlib.util
import os

import ml_collections

from tfmetanas import errors


def base_config():
    config = ml_collections.ConfigDict()

    config.data = ml_collections.ConfigDict()
    config.data.source = "glyphs"  # glyphs | omniglot | omniglot_tfds | miniimagenet | sinusoid
    config.data.root = ""  # "" -> $TFMETANAS_DATA_DIR
    config.data.split_scheme = "vinyals"  # Omniglot: lake | vinyals | mamlpp
    config.data.image_size = 28  # pixels (square)
    config.data.ways = 5  # N
    config.data.shots = 1  # K support images per class
    config.data.queries = 15  # query images per class
    config.data.train_shots = 0  # support images per class in meta-training (0: data.shots)
    config.data.rotations = True  # 90/180/270 rotations as new classes (train split only)

    config.model = ml_collections.ConfigDict()
    config.model.name = "conv4"
    config.model.filters = 64
    config.model.num_blocks = 4
    config.model.downsample = "max_pool"  # max_pool | strided
    config.model.activation = "leaky_relu"
    config.model.hidden = (40, 40)  # MLP hidden widths
    config.model.channels = (64, 128, 256, 512)  # ResNet-12 block widths
    config.model.pooling = "avg"  # ResNet-12 head: avg | flatten
    config.model.slope = 0.1  # ResNet-12 LeakyReLU slope
    config.model.bn = ml_collections.ConfigDict()
    config.model.bn.num_steps = 1  # rows of per-step BN (MAML++: inner.steps)
    config.model.bn.per_step_stats = False  # MAML++ BNRS
    config.model.bn.per_step_affine = False  # MAML++ BNWB
    config.model.bn.affine_group = "meta"  # gamma/beta: meta (outer only) | weights (adapted)
    config.model.bn.momentum = 0.9
    config.model.darts = ml_collections.ConfigDict()  # METANAS search network (name "darts")
    config.model.darts.channels = 28  # C of every cell node (paper, Omniglot: 28)
    config.model.darts.num_cells = 4
    config.model.darts.reduction_cells = (1, 3)  # paper: cells 2 and 4 reduce
    config.model.darts.num_nodes = 3
    config.model.darts.k = 2  # input subset size of ops_and_inputs
    config.model.darts.primitives = (
        "max_pool_3x3", "avg_pool_3x3", "skip_connect", "conv_1x5_5x1",
        "conv_3x3", "sep_conv_3x3", "dil_conv_3x3",
    )
    config.model.darts.sparsify = "ops_and_inputs"  # none | ops | ops_and_inputs
    config.model.darts.prune_threshold = 0.01  # soft pruning in the forward pass (0: off)
    config.model.darts.hard_threshold = 0.01  # hard pruning at the end of task learning
    config.model.darts.soft_prune = "mask"  # mask: pruned ops scaled by 0 | cond: skipped by tf.cond
    config.model.darts.running_stats = True  # BN moving statistics updated (False: never read)
    # Leading cells whose activations are recomputed in the backward pass (memory for time).
    config.model.darts.recompute_cells = 0
    # Max-pooling's gradient: native (TensorFlow's) | argmax (a scatter whose
    # second-order gradients are exact in compiled graphs; TensorFlow's are not
    # for 3x3 stride-1 pooling, so second-order meta-learners need it).
    config.model.darts.max_pool_gradient = "native"
    config.model.darts.stem_multiplier = 3
    config.model.darts.reduction_channel_multiplier = 1  # 1: constant channel count

    config.inner = ml_collections.ConfigDict()
    config.inner.rule = "sgd"  # sgd | adam | lslr
    config.inner.groups = ("weights",)
    config.inner.steps = 5  # inner steps in meta-training
    config.inner.eval_steps = 10  # inner steps at meta-test
    config.inner.lr = 0.4
    config.inner.batch_size = 0  # support examples per inner step (0: all; Reptile: 10)
    config.inner.persistent_state = False  # Reptile: carry the inner Adam state across tasks
    config.inner.while_loop = True  # Reptile: inner steps in a tf.while_loop (False: unrolled)
    config.inner.adam_beta1 = 0.0
    config.inner.momentum = 0.0
    config.inner.weight_decay = 0.0
    config.inner.bn_mode = "transductive"  # transductive | running
    config.inner.alfa = ml_collections.ConfigDict()
    config.inner.alfa.layers = 3  # ALFA generator depth (paper: 3; official code: 2)
    config.inner.alfa.init_beta = 1.0  # initial weight-decay post-multiplier beta0

    config.meta = ml_collections.ConfigDict()
    config.meta.algorithm = "maml"  # maml | reptile | none
    config.meta.meta_batch_size = 32  # tasks per meta-step (global)
    config.meta.parallel_tasks = 1  # tasks of a meta-batch run at once (same results; memory)
    config.meta.second_order = False
    config.meta.first_order_until = 0  # iteration from which second order is used (MAML++ DA)
    config.meta.optimizer = "adam"
    config.meta.lr = 1e-3
    config.meta.schedule = "constant"  # constant | cosine | linear
    config.meta.min_lr = 0.0
    config.meta.step_sizes = ml_collections.ConfigDict()  # Reptile: {group: step size}
    config.meta.groups = ("weights", "arch", "meta")  # MAML: groups the outer loop learns
    config.meta.msl = False  # MAML++ multi-step loss
    config.meta.msl_epochs = 10  # MSL annealing length (epochs)
    config.meta.iterations_per_epoch = 500  # meta-iterations per MAML++ epoch

    config.metanas = ml_collections.ConfigDict()  # used when model.name == "darts"
    config.metanas.t_max = 1.0  # softmax temperature at the first step of a task
    config.metanas.t_min = 0.1  # ... at its last step, in the +50 phase and for pruning
    config.metanas.warmup_until = -1  # frozen architecture before this iteration (-1: steps / 2)
    config.metanas.eval_arch_steps = 50  # meta-test: weights + architecture steps
    config.metanas.eval_weight_steps = 50  # ... then weights-only steps
    config.metanas.eval_batch_size = -1  # ... support examples per step (-1: inner.batch_size)

    config.train = ml_collections.ConfigDict()
    config.train.steps = 1000  # meta-iterations
    config.train.seed = 0
    config.train.eval_every = 500  # meta-iterations between validations (0: only at the end)
    config.train.log_every = 50
    config.train.checkpoint_every = 0  # 0: at every validation
    config.train.keep_best = 1  # best-by-validation checkpoints kept
    config.train.jit_compile = False
    # Threads per op and ops in parallel (0: TensorFlow's default, all cores for both).
    config.train.intra_op_threads = 0
    config.train.inter_op_threads = 0
    # Seconds between hand-backs of freed memory while a compiled step is first
    # called (graph optimisation's transient; `tfmetanas.memory`). 0: off.
    config.train.trim_interval = 0.2
    # Grappler passes skipped when a step is first called: "" (none), "all", or
    # comma-separated names (`tfmetanas.compiled.configure_graph_optimizer`).
    config.train.skip_graph_optimizations = ""
    config.train.time_limit_minutes = 0.0  # training-time budget, summed over resumptions (0: none)
    config.train.progress = True
    # Where the meta-batch runs (README "Several GPUs and machines"): none |
    # mirrored (local GPUs, or train.devices) | multi_worker (TF_CONFIG) | tpu.
    # meta.meta_batch_size stays the global meta-batch, split over replicas.
    config.train.distribute = "none"
    config.train.devices = ()  # mirrored: device names, e.g. ("/gpu:0", "/gpu:1"); (): all GPUs
    config.train.tpu = ""  # tpu: TPU name or grpc:// address ("": local / from the environment)

    config.eval = ml_collections.ConfigDict()
    config.eval.num_tasks = 600  # fixed test tasks
    config.eval.num_val_tasks = 100  # fixed validation tasks during training
    config.eval.batch_size = 10  # tasks per evaluation call
    return config


def metanas_config(source, ways, shots, queries, arch_lr, steps=30_000):
    """METANAS with the paper's hyperparameters (Elsken et al. 2020, Sec. 5.1, Table 4).

    The DARTS search network of `base_config` (4 cells, cells 2 and 4 reduce,
    3 nodes, subsets of 2, 28 channels); weights and architecture adapted by
    Adam with beta1 = 0 (weights lr 1e-3; architecture `arch_lr`, weight decay
    1e-3), 5 task steps in meta-training; Reptile with meta step sizes 1.0
    (weights) and 0.6 (architecture), linearly annealed, meta-batch 10;
    warm-up for half of `steps`; meta-test 50+50 steps. `steps` is our choice.
    """
    config = base_config()
    config.data.source = source
    if source == "omniglot":
        config.data.split_scheme = "vinyals"
    config.data.ways, config.data.shots, config.data.queries = ways, shots, queries
    config.model.name = "darts"
    config.inner.groups = ("weights", "arch")
    config.inner.rule, config.inner.lr, config.inner.adam_beta1 = "adam", 1e-3, 0.0
    config.inner.arch = {"rule": "adam", "lr": arch_lr, "weight_decay": 1e-3}
    config.inner.steps = 5
    config.meta.algorithm = "reptile"
    config.meta.step_sizes = {"weights": 1.0, "arch": 0.6}
    config.meta.schedule = "linear"
    config.meta.meta_batch_size = 10
    config.metanas.eval_arch_steps, config.metanas.eval_weight_steps = 50, 50
    # Transductive BN normalises with batch statistics everywhere (export
    # recalibrates from the support set): no moving-average updates to carry.
    config.model.darts.running_stats = False
    # The first cell (full resolution) holds most of a task step's activations:
    # recomputed in the backward pass, the step's tensors peak about 100 MB lower
    # for one more forward pass of that cell (docs/performance.md, session 10).
    config.model.darts.recompute_cells = 1
    config.train.steps = steps
    config.train.eval_every = 1000
    # Many small independent ops (7 per edge, 9 edges per cell): one thread
    # each, as many at once as there are cores (docs/performance.md: 1.45x).
    config.train.intra_op_threads = 1
    return config


def small_convs_runtime(config):
    """CPU runtime for small convolutions (Omniglot): one thread per op, 4 tasks at once.

    Results do not change (tests/meta/parallel_tasks_test.py); on 2 cores the
    Omniglot MAML-family configs run 1.6-2.1x faster (docs/performance.md,
    "Tasks in parallel"). Not for large images: on mini-ImageNet extra tasks
    at once cost memory and no time.
    """
    config.train.intra_op_threads = 1
    config.meta.parallel_tasks = 4
    return config


def sibling_config(config_file, name):
    """`get_config()` of the config file `name` next to `config_file`.

    For budget variants of a paper config, e.g. in ``configs/omniglot/x_cpu.py``:
    ``config = sibling_config(__file__, "x.py")`` (config files are loaded by
    path, so they cannot import each other as modules). `name` may be a
    relative path, e.g. ``"../omniglot/x.py"`` (the benchmark configs).
    """
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    if not os.path.isfile(path):
        raise errors.ConfigError(f"No config file {path}.")
    module_name = os.path.splitext(os.path.basename(path))[0]  # name may be "../x/y.py"
    spec = importlib.util.spec_from_file_location(f"_tfmetanas_config_{module_name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def bench_row(row, reference, *, orders=("second", "first"), phase="steady", mode="meta_step",
              synthetic_data=False):
    """The `bench` section of a `configs/bench/` config (read by tools/benchmark.py).

    Args:
      row: the row's name in the reference table (issue: performance).
      reference: the reference figures, e.g. ``{"second_order_ms": ..., "first_order_ms":
        ..., "peak_rss_mb": ...}``.
      orders: derivative orders measured, one process each ("second", "first", "config").
      phase: "steady" (the options of the last iteration) or "warmup" (of the first).
      mode: "meta_step", or "meta_test" (one task's meta-test adaptation).
      synthetic_data: random images of the config's shapes instead of the real data.
    """
    return dict(row=row, reference=dict(reference), orders=tuple(orders), phase=phase,
                mode=mode, synthetic_data=bool(synthetic_data))
