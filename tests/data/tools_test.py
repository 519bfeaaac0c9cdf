"""tools/show_episodes.py renders a task to a PNG."""

import os
import subprocess
import sys

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_show_episodes(tmp_path):
    out = tmp_path / "task.png"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "show_episodes.py"),
            f"--config={os.path.join(ROOT, 'tests', 'data', 'tiny_config.py')}",
            f"--out={out}",
            "--split=val",
            "--index=3",
            "--config.data.ways=3",
        ],
        check=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    with Image.open(out) as image:
        assert image.size[0] > 100 and image.size[1] > 100
