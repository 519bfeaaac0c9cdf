r"""FairNAS supernet on the MobileNet space (Chu et al. 2021; SUMNAS Section 5.2 baseline).

SUMNAS (Ha et al., ICLR 2022) Section 5.2 compares FairNAS and SUMNAS supernets on
ImageNet in this space (NB201 CIFAR-10 Kendall tau, Table 4: FairNAS 0.786).

  python -m tfmetanas.search --config=configs/mobilenet/fairnas.py --workdir=/tmp/mobilenet_fairnas

Quick CPU smoke run (glyphs, tiny supernet):

  python -m tfmetanas.search --config=configs/mobilenet/fairnas.py --workdir=/tmp/mobilenet_fairnas_smoke \
    --config.train.steps=20 --config.search.generations=1 --config.search.rank.num_archs=8

The paper's numbers need the paper's data (ImageNet, 224x224 RGB); export it as one
sub-folder of images per class and set --config.data.source=folder
--config.data.root=<folder>. The default here is the embedded `glyphs` data
set, on which rank against tools/standalone_reference.py
output (search.rank.reference=<json>).
"""

import ml_collections
from ml_collections import config_dict


def get_config():
    config = ml_collections.ConfigDict()

    # Supervised many-class data: uint8 class arrays from the data layer,
    # each class split into train / val images.
    config.data = ml_collections.ConfigDict()
    config.data.source = "glyphs"  # any tfmetanas.data source, or "random"
    config.data.root = ""  # data directory for file-based sources
    config.data.image_size = 32  # pixels (square)
    config.data.num_classes = 100  # classes used (0: all of the split)
    config.data.per_class = 20  # images per class ("random" source only)
    config.data.channels = 1  # image channels ("random" source only)
    config.data.val_per_class = 4  # images per class held out for validation

    config.model = ml_collections.ConfigDict()
    config.model.space = "mobilenet"
    config.model.width_multiplier = 0.25  # channel multiplier (paper: 1.0); CPU-sized
    # "gather": one block per layer on the chosen candidate's weights (less than half the
    # graph, the first step 29-45% sooner; docs/performance.md, "Session 20"; no XLA);
    # "switch" (tf.switch_case over whole candidates) or "stack" (every candidate runs).
    config.model.selection = "gather"
    config.model.bn_momentum = 0.9  # BN running-statistics decay (Keras convention)

    config.train = ml_collections.ConfigDict()
    config.train.strategy = "fairnas"
    config.train.steps = 2000  # optimizer steps
    config.train.seed = 0
    config.train.batch_size = 64  # images per step (every sub-model sees the batch)
    config.train.learning_rate = 0.045  # SGD learning rate, cosine-decayed
    config.train.momentum = 0.9  # outer SGD momentum
    config.train.weight_decay = 4e-05  # L2, added to the (pseudo-)gradient
    config.train.inner_steps = 1  # SUMNAS k
    config.train.inner_learning_rate = 0.05  # SUMNAS inner SGD lr (paper appendix)
    config.train.inner_momentum = 0.9  # SUMNAS inner SGD momentum (paper appendix)
    config.train.fair_reduction = "mean"  # FairNAS: average the m gradients
    config.train.jit_compile = False
    config.train.trim_interval = 0.2  # s between malloc trims in a first call (tfmetanas.memory)
    config.train.skip_graph_optimizations = ""  # Grappler passes skipped (tfmetanas.compiled)
    config.train.log_every = 10  # steps
    config.train.eval_every = 500  # steps
    config.train.checkpoint_every = 200  # steps
    # none | mirrored | multi_worker | tpu (README); FairNAS/SUMNAS split their m
    # sub-models per step over the replicas (SPOS: none only).
    config.train.distribute = "none"
    config.train.devices = ()  # mirrored: e.g. ("/gpu:0", "/gpu:1"); (): all GPUs

    config.search = ml_collections.ConfigDict()
    config.search.method = "evolution"  # "evolution" (Algorithm 2) or "random"
    config.search.generations = 20  # G
    config.search.population = 50  # P
    config.search.offspring = 50  # C (half mutation, half crossover)
    config.search.mutation_prob = 0.1  # p
    config.search.max_macs = config_dict.placeholder(float)  # M, multiply-accumulates
    config.search.max_queries = config_dict.placeholder(int)  # distinct sub-models scored
    config.search.seed = 0
    config.search.oracle_path = ""  # NB201 table; "" = $TFMETANAS_DATA_DIR
    config.search.oracle_dataset = "cifar10"
    config.search.rank = ml_collections.ConfigDict()
    config.search.rank.num_archs = 20  # sub-models ranked (paper: 100+)
    config.search.rank.seed = 1
    # "oracle" (NB201 table), "none", or a JSON from tools/standalone_reference.py
    config.search.rank.reference = "none"
    config.search.rank.calibration_batches = 4  # BN recalibration batches
    config.search.rank.calibration_batch_size = 64  # images
    config.search.rank.eval_batch_size = 256  # images
    config.search.rank.eval_archs_during_training = 4  # sub-models at each eval
    return config
