"""The data-source registry: `data.source` name -> TaskSource builder.

Every builder has the signature `build(data_config, split, seed) -> TaskSource`.
"""

from tfmetanas.data import base, folders, glyphs, miniimagenet, omniglot, sinusoid
from tfmetanas.registry import Registry

SOURCES = Registry("data source")
SOURCES.register("glyphs", glyphs.build)
SOURCES.register("omniglot", omniglot.build)
SOURCES.register("omniglot_tfds", omniglot.build_tfds)
SOURCES.register("miniimagenet", miniimagenet.build)
SOURCES.register("sinusoid", sinusoid.build)
SOURCES.register("folder", folders.build)


def get_task_source(data_config, split, seed):
    """Builds the episode sampler of one split.

    Args:
      data_config: the `data` section of a config (ConfigDict, dict or any
        object with attributes): source, root, split_scheme, image_size, ways,
        shots, queries, rotations and source-specific sub-sections; missing
        optional keys take the defaults documented in docs/data.md.
      split: "train", "val" or "test".
      seed: integer seed; task i is a pure function of (seed, split, i).

    Returns:
      A `TaskSource`.

    Raises:
      ConfigError: unknown source or split, or impossible values.
      DataError: missing or corrupt data, or a split too small for the episode shape.
    """
    base.check_split(split)
    builder = SOURCES.get(base.cfg_get(data_config, "source", "glyphs"))
    return builder(data_config, split, int(seed))
