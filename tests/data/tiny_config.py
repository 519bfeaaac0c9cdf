"""A tiny glyphs config for tools/show_episodes.py and its test (small, fast)."""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict()
    config.data.source = "glyphs"
    config.data.image_size = 28  # pixels
    config.data.ways, config.data.shots, config.data.queries = 5, 1, 2
    config.data.rotations = True
    config.data.glyphs = {"num_classes": 30, "instances": 6, "train_classes": 20, "val_classes": 5}
    config.train = ml_collections.ConfigDict({"seed": 0})
    return config
