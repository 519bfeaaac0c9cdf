"""Model zoo: configs that cannot work are config errors, not runtime crashes."""

import pytest

from tfmetanas import errors
from tfmetanas.models import zoo


def test_conv4_max_pooling_on_too_small_images_is_a_config_error():
    with pytest.raises(errors.ConfigError, match="at least 16 px, got 14x14"):
        zoo.build_model({"name": "conv4", "filters": 4}, (14, 14, 1), 5)


def test_conv4_smallest_images_and_strided_blocks_build():
    zoo.build_model({"name": "conv4", "filters": 4}, (16, 16, 1), 5)
    zoo.build_model({"name": "conv4", "filters": 4, "downsample": "strided"}, (14, 14, 1), 5)
