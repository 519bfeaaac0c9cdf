"""Episodic few-shot data: task sources (Omniglot, mini-ImageNet, glyphs, sinusoid, folders).

`get_task_source(data_config, split, seed)` returns a `TaskSource` whose
`task(i)` is a pure function of (seed, split, i); see docs/data.md.
"""

from tfmetanas.data.base import TaskSource
from tfmetanas.data.preprocess import load_image_file, preprocess_images
from tfmetanas.data.sources import SOURCES, get_task_source

__all__ = ["SOURCES", "TaskSource", "get_task_source", "load_image_file", "preprocess_images"]
