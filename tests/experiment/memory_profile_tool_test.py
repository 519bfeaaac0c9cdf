"""tools/memory_profile.py: the per-node and data memory profiles run and report sizes."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "memory_profile.py")


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_nodes_profile_counts_the_chain_and_its_memory():
    result = _run("--what=nodes", "--nodes=300")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # Each link is a RandomUniform, a Mul, an AddV2 and their constants.
    assert out["graph_nodes"] >= 3 * 300
    for phase in ("imported", "traced", "called", "called_trimmed"):
        assert out[phase]["rss"] > 100  # TensorFlow alone holds hundreds of MB
        # The resident set is its anonymous memory and its file-backed pages.
        assert out[phase]["anon"] > 0 and out[phase]["file"] > 0
        assert abs(out[phase]["anon"] + out[phase]["file"] - out[phase]["rss"]) <= 2
    assert out["called"]["hwm"] >= out["called"]["rss"]
    assert set(out["kb_per_node"]) == {"trace (held)", "first call (peak)", "first call (held)"}


def test_data_profile_on_the_quickstart_config():
    result = _run("--what=data", f"--config={os.path.join(ROOT, 'configs', 'quickstart.py')}")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["first_batch"]["hwm"] >= out["experiment"]["rss"] >= out["imported"]["rss"] > 100


def test_data_profile_needs_a_config():
    result = _run("--what=data")
    assert result.returncode != 0 and "needs --config" in result.stderr


def test_step_profile_of_the_quickstart_meta_step():
    result = _run("--what=step", f"--config={os.path.join(ROOT, 'configs', 'quickstart.py')}")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["graph_nodes"] > 100
    assert out["traced"]["rss"] >= out["imported"]["rss"] > 100
    # Each call's peak is at least what was resident before it.
    assert out["first_call"]["hwm"] >= out["traced"]["rss"] - 50
    assert out["second_call"]["hwm"] >= out["first_call_trimmed"]["rss"] - 50
    assert out["first_call_s"] > 0 and out["second_call_s"] > 0
    assert out["mode"] == "meta_step"


def test_step_profile_runs_the_mode_of_the_configs_bench_section(tmp_path):
    # A benchmark row's config says what one call runs (bench.mode); the profile
    # runs the same, as tools/benchmark.py does, unless --mode says otherwise.
    config = tmp_path / "meta_test_row.py"
    config.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('q', {os.path.join(ROOT, 'configs', 'quickstart.py')!r})\n"
        "q = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(q)\n"
        "def get_config():\n"
        "    config = q.get_config()\n"
        "    config.bench = {'mode': 'meta_test'}\n"
        "    return config\n")
    for extra, mode in (((), "meta_test"), (("--mode=meta_step",), "meta_step")):
        result = _run("--what=step", f"--config={config}", *extra)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1])["mode"] == mode


def test_step_setting_follows_the_bench_section_and_refuses_unknown_values():
    # In a process of its own: the tool defines absl flags (--config) that other
    # tools loaded by the test session define too.
    check = f"""
import importlib.util
from absl import app
spec = importlib.util.spec_from_file_location("memory_profile", {TOOL!r})
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
assert tool.step_setting({{}}) == ("meta_step", "steady")
assert tool.step_setting({{"bench": None}}) == ("meta_step", "steady")
row = {{"bench": {{"mode": "meta_step", "phase": "warmup"}}}}
assert tool.step_setting(row) == ("meta_step", "warmup")
assert tool.step_setting(row, "meta_test", "steady") == ("meta_test", "steady")
try:
    tool.step_setting({{"bench": {{"mode": "meta-test"}}}})
except app.UsageError as e:
    assert "bench.mode" in str(e)
else:
    raise AssertionError("an unknown bench.mode was accepted")
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
