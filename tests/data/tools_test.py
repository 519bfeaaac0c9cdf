"""tools/show_episodes.py renders a task to a PNG; tools report package errors in one line."""

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


def test_a_tool_reports_a_package_error_in_one_line(tmp_path):
    """Bad input to a tool (here: more ways than the split has classes) is the
    package's error as one line and exit code 2, not a traceback."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "show_episodes.py"),
            f"--config={os.path.join(ROOT, 'tests', 'data', 'tiny_config.py')}",
            f"--out={tmp_path / 'task.png'}",
            "--config.data.ways=1000",
        ],
        env=env, cwd=ROOT, timeout=300, capture_output=True, text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "show_episodes.py: error:" in result.stderr and "data.ways" in result.stderr
    assert not (tmp_path / "task.png").exists()
