"""tools/benchmark.py: the bench configs reproduce issue 9's rows; a run and the table render."""

import functools
import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from tfmetanas import errors
from tfmetanas.experiment.defaults import sibling_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "benchmark.py")
BENCH = sorted(glob.glob(os.path.join(ROOT, "configs", "bench", "*.py")))

# (file, meta-batch, ways, support shots in training, queries, image size, inner steps,
#  reference ms by order) from the issue's table.
ROWS = {
    "mamlpp_omniglot_5w1s_mb8.py": (8, 5, 1, 1, 28, 5, {"second": 1357, "first": 653}),
    "mamlpp_omniglot_20w1s_mb8.py": (8, 20, 1, 1, 28, 5, {"second": 3143, "first": 1714}),
    "mamlpp_omniglot_20w1s_mb16.py": (16, 20, 1, 1, 28, 5, {"second": 6336, "first": 3483}),
    "mamlpp_miniimagenet_5w1s_mb2.py": (2, 5, 1, 15, 84, 5, {"second": 6663}),
    "mamlpp_miniimagenet_5w5s_mb2.py": (2, 5, 5, 15, 84, 5, {"second": 13230}),
    "alfa_maml_miniimagenet_5w5s_mb2.py": (2, 5, 5, 15, 84, 5, {"second": 9204, "first": 4401}),
    "metanas_omniglot_20w_warmup.py": (10, 20, 15, 1, 28, 5, {"first": 60600}),
    "metanas_omniglot_20w_search.py": (10, 20, 15, 1, 28, 5, {"first": 104500}),
    "metanas_omniglot_20w1s_metatest.py": (10, 20, 15, 1, 28, 5, {"first": 73700}),
}


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


@functools.cache
def _tool():
    """tools/benchmark.py as a module, loaded once (it defines absl flags)."""
    spec = importlib.util.spec_from_file_location("benchmark_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_every_row_has_a_config():
    assert sorted(os.path.basename(p) for p in BENCH) == sorted(ROWS)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_bench_config_shapes_match_the_issue(name):
    config = sibling_config(os.path.join(ROOT, "configs", "bench", name), name)
    batch, ways, shots, queries, size, steps, reference = ROWS[name]
    assert int(config.meta.meta_batch_size) == batch
    assert int(config.data.ways) == ways
    assert int(config.data.get("train_shots", 0) or config.data.shots) == shots
    assert int(config.data.queries) == queries
    assert int(config.data.image_size) == size
    assert int(config.inner.steps) == steps
    assert tuple(config.bench.orders) == tuple(reference)
    for order, ms in reference.items():
        assert config.bench.reference[f"{order}_order_ms"] == ms
    if name.startswith("mamlpp"):
        assert config.inner.rule == "lslr" and config.meta.msl
        assert config.model.bn.per_step_stats and config.model.bn.per_step_affine
        assert int(config.model.filters) == (64 if "omniglot" in name else 48)
    if name.startswith("alfa"):
        assert config.inner.rule == "alfa" and int(config.model.filters) == 48
    if name.startswith("metanas"):
        darts = config.model.darts
        assert int(darts.num_cells) == 4 and tuple(darts.reduction_cells) == (1, 3)
        assert int(darts.num_nodes) == 3 and int(darts.channels) == 28 and int(darts.k) == 2
        assert len(darts.primitives) == 7
        assert int(config.inner.batch_size) == 20 and not config.meta.second_order
        assert config.bench.phase == ("warmup" if "warmup" in name else "steady")
        assert config.bench.mode == ("meta_test" if "metatest" in name else "meta_step")
    if "metatest" in name:
        assert int(config.data.shots) == 1
        assert (config.metanas.eval_arch_steps, config.metanas.eval_weight_steps) == (50, 50)
        assert int(config.metanas.eval_batch_size) == 10  # the reference's batch_size_test


def test_synthetic_data_flag_overrides_the_bench_section():
    tool = _tool()
    plain = sibling_config(TOOL, "../configs/miniimagenet/maml_5w1s.py")
    row = sibling_config(TOOL, "../configs/bench/mamlpp_miniimagenet_5w1s_mb2.py")

    def synthetic(config, flag):
        settings = tool.settings_for(config, ["false"], ["config"], synthetic_data=flag)
        return [s["synthetic_data"] for s in settings]

    assert synthetic(plain, None) == [False] and synthetic(plain, True) == [True]
    assert synthetic(row, None) == [True] and synthetic(row, False) == [False]
    omniglot = sibling_config(TOOL, "../configs/omniglot/reptile_5w1s.py")
    with pytest.raises(errors.ConfigError, match="--synthetic_data.*'omniglot'"):
        synthetic(omniglot, True)


def test_run_reports_time_memory_flops_roofline_and_load(tmp_path):
    out = tmp_path / "bench.jsonl"
    # A `tfmetanas` ahead of the installed one on the path: the tool must measure
    # the package of its own checkout (whose commit it records), not this one.
    decoy = tmp_path / "decoy" / "tfmetanas"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError('the decoy package was imported')\n")
    subprocess.run(
        [
            sys.executable,
            TOOL,
            f"--config={os.path.join(ROOT, 'configs', 'sinusoid', 'maml_5shot.py')}",
            "--config.meta.meta_batch_size", "2",  # the space-separated form
            "--noconfig.inner.while_loop",
            "--jit=false",
            "--order=first",
            "--repeats=2",
            "--warmup=0",
            "--roofline_size=128",
            f"--out={out}",
        ],
        check=True,
        env=dict(_env(), PYTHONPATH=os.pathsep.join(
            filter(None, [str(decoy.parent), os.environ.get("PYTHONPATH")]))),
        cwd=ROOT,
        timeout=600,
    )
    (result,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert result["order"] == "first" and result["meta_batch_size"] == 2
    assert result["config_overrides"] == {"meta.meta_batch_size": 2, "inner.while_loop": False}
    assert result["repeats"] == 2 and result["ms_min"] <= result["ms_median"] <= result["ms_max"]
    assert result["peak_rss_mb"] > 0 and result["roofline_gflops"] > 0
    assert result["cpu_ms_per_call"] > 0
    # What the step ran on: support examples per inner step, no meta-test batch, the code.
    assert result["inner_batch_size"] == 0 and result["eval_batch_size"] is None
    assert result["package"] == os.path.join(ROOT, "tfmetanas")
    assert result["commit"] is None or re.fullmatch(r"[0-9a-f]{4,}(\+dirty)?", result["commit"])
    assert 0 < result["setup_rss_mb"] <= result["peak_rss_mb"]
    if os.path.exists("/proc/self/clear_refs"):  # Per-phase peaks (Linux).
        assert 0 < result["first_call_peak_rss_mb"] <= result["peak_rss_mb"]
        assert 0 < result["steady_peak_rss_mb"] <= result["peak_rss_mb"]
    split = result["steady_end_rss_split_mb"]
    if os.path.exists("/proc/self/status"):  # Anonymous and file-backed pages (Linux).
        assert split["anon"] > 0 and split["file"] > 0
        assert split["anon"] + split["file"] <= result["peak_rss_mb"] + 1
    assert isinstance(result["load_avg_1m_before"], float)
    # 1-40-40-1 MLP, 5 support and 5 query points, one inner step, first-order MAML:
    # per example a forward pass is 2 * (40 + 1600 + 40) = 3,360 FLOPs, its backward pass
    # 2 * 40 + 2 * (2 * 1600) + 2 * (2 * 40) = 6,640 (no dL/dx); the inner step is a forward
    # and a backward pass on the support set, the query a forward and a backward pass.
    assert result["flops"] == 2 * (5 + 5) * (3360 + 6640)
    assert set(result["gflop_by_op"]) == {"MatMul"}
    assert result["graph_nodes"] >= sum(result["graph_nodes_by_op"].values()) > 0
    assert result["graph_nodes_by_op"].get("MatMul", 0) >= 4


def test_render_table(tmp_path):
    doc = {
        "machine": {},
        "results": [
            {
                "row": "MAML++ Omniglot 5-way 1-shot, meta-batch 8",
                "order": "second",
                "reference_ms": 1357.0,
                "ms_median": 678.5,
                "ms_min": 600.0,
                "ms_max": 700.0,
                "speedup": 2.0,
                "first_call_s": 9.3,
                "reference_peak_rss_mb": 866.0,
                "peak_rss_mb": 800.0,
                "gflop": 40.0,
                "gflops_achieved": 59.0,
                "roofline_gflops": 67.0,
                "load_avg_1m_before": 1.0,
                "load_avg_1m_after": 1.2,
            },
            {"row": "METANAS ... meta-test", "order": "first", "failed": True},
        ],
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc))
    table = subprocess.run(
        [sys.executable, TOOL, f"--render={path}"],
        check=True,
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    lines = table.strip().splitlines()
    assert lines[0].startswith("| reference run | order | reference |")
    assert lines[2] == (
        "| MAML++ Omniglot 5-way 1-shot, meta-batch 8 | second | 1,357 ms | 678 (600-700) ms "
        "| **2.00x** | 2.00x | 9.3 s | 866 / 800 MB | 40.0 | 59.0 (88% of 67) | 1.0-1.2 |"
    )
    assert "failed" in lines[3]

    # The JSON lines that --out appends, one run each, render the same.
    lines_path = tmp_path / "bench.jsonl"
    lines_path.write_text("\n".join(json.dumps(r) for r in doc["results"]) + "\n")
    table_2 = subprocess.run(
        [sys.executable, TOOL, f"--render={lines_path}"],
        check=True, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300,
    ).stdout
    assert table_2 == table


def test_render_against_a_reference_measured_here(tmp_path):
    """--measured_reference: our rows beside the reference code's runs on this machine,
    matched by row and order; unmatched rows say so; malformed runs are refused."""
    row = "MAML++ Omniglot 5-way 1-shot, meta-batch 8"
    ours = [
        {"row": row, "order": "second", "reference_ms": 1357.0, "reference_peak_rss_mb": 866.0,
         "ms_median": 400.0, "ms_min": 390.0, "ms_max": 420.0, "peak_rss_mb": 850.0},
        {"row": row, "order": "first", "reference_ms": 653.0, "reference_peak_rss_mb": 866.0,
         "ms_median": 200.0, "ms_min": 190.0, "ms_max": 230.0, "peak_rss_mb": 690.0},
        {"row": "METANAS ... meta-test", "order": "first", "failed": True},
    ]
    results = tmp_path / "ours.jsonl"
    results.write_text("\n".join(json.dumps(r) for r in ours) + "\n")
    measured = tmp_path / "reference.jsonl"
    measured.write_text(json.dumps({"row": row, "order": "second", "median_ms": 1000.0,
                                    "min_ms": 980.0, "max_ms": 1100.0,
                                    "peak_rss_mb": 1095.0}) + "\n"
                        + json.dumps({"row": "MAML++ Omniglot 5-way", "order": "first",
                                      "median_ms": 1.0, "min_ms": 1.0, "max_ms": 1.0,
                                      "peak_rss_mb": 1.0}) + "\n")

    def render(path):
        return subprocess.run(
            [sys.executable, TOOL, f"--render={results}", f"--measured_reference={path}"],
            env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)

    proc = render(measured)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("| reference run | order | reference here")
    assert lines[2] == (f"| {row} | second | 1,000 (980-1,100) ms | 400 (390-420) ms "
                        "| **2.50x** | 1,095 / 850 MB | 1,357 ms, 866 MB |")
    assert lines[3] == (f"| {row} | first | not measured | 200 (190-230) ms | — "
                        "| — / 690 MB | 653 ms, 866 MB |")
    assert lines[4].startswith("| METANAS ... meta-test | first | not measured | failed |")
    assert "matching no row of ours: 'MAML++ Omniglot 5-way', first order" in proc.stderr

    for name, run in [("bad", {"row": row, "order": "second", "median_ms": "fast"}),
                      ("no_range", {"row": row, "order": "second", "median_ms": 1.0,
                                    "peak_rss_mb": 1.0}),
                      ("text", {"row": row, "order": "second", "median_ms": "1000",
                                "min_ms": 1, "max_ms": 1, "peak_rss_mb": 1})]:
        bad = tmp_path / f"{name}.jsonl"
        bad.write_text(json.dumps(run) + "\n")
        proc = render(bad)
        assert proc.returncode != 0 and f"{name}.jsonl:1: not a reference run" in proc.stderr

    proc = render(tmp_path / "missing.jsonl")
    assert proc.returncode != 0 and "--measured_reference=" in proc.stderr
    assert "cannot read it" in proc.stderr and "Traceback" not in proc.stderr
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text("{not json\n")
    proc = subprocess.run([sys.executable, TOOL, f"--render={corrupt}"], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "neither a JSON document nor JSON lines" in proc.stderr


def test_render_pairs_repeated_reference_runs_with_ours_in_file_order(tmp_path):
    """Interleaved pairs: our k-th run of a row against the reference's k-th run of it,
    or its last when it has fewer; reference runs left over are reported."""
    row = "METANAS Omniglot 20-way 1-shot meta-test, one task"

    def ours_run(ms):
        return {"row": row, "order": "first", "reference_ms": 73700.0,
                "reference_peak_rss_mb": 825.0, "ms_median": ms, "ms_min": ms, "ms_max": ms,
                "peak_rss_mb": 1150.0}

    def ref_run(ms):
        return {"row": row, "order": "first", "median_ms": ms, "min_ms": ms, "max_ms": ms,
                "peak_rss_mb": 820.0}

    def render(ours_ms, ref_ms):
        results, measured = tmp_path / "ours.jsonl", tmp_path / "reference.jsonl"
        results.write_text("".join(json.dumps(ours_run(m)) + "\n" for m in ours_ms))
        measured.write_text("".join(json.dumps(ref_run(m)) + "\n" for m in ref_ms))
        proc = subprocess.run(
            [sys.executable, TOOL, f"--render={results}", f"--measured_reference={measured}"],
            env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        speedups = [line.split("|")[5].strip() for line in proc.stdout.strip().splitlines()[2:]]
        return speedups, "paired with no run of ours" in proc.stderr, proc.stderr

    assert render([20000.0, 10000.0], [60000.0, 40000.0])[:2] == (["**3.00x**", "**4.00x**"],
                                                                   False)
    speedups, _, stderr = render([20000.0, 10000.0], [60000.0])
    assert speedups == ["**3.00x**", "**6.00x**"]
    assert f"1 run(s) of ours of {row!r}, first order, paired with the reference's last" in stderr
    speedups, left_over, stderr = render([20000.0], [60000.0, 40000.0, 30000.0])
    assert speedups == ["**3.00x**"] and left_over
    assert f"2 measured reference run(s) of {row!r}, first order, paired" in stderr


def test_a_failed_setting_is_recorded_and_fails_the_run(tmp_path):
    """A setting whose subprocess fails ends the run with exit code 2 after the other
    settings ran; --out holds it marked failed, and the table shows it."""
    out = tmp_path / "bench.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            TOOL,
            f"--config={os.path.join(ROOT, 'configs', 'sinusoid', 'maml_5shot.py')}",
            "--config.model.name=no_such_model",  # accepted by the flag, refused in the child
            "--jit=false",
            "--order=first,second",
            "--repeats=1",
            "--warmup=0",
            "--flops=false",
            "--roofline_size=0",
            f"--out={out}",
        ],
        env=_env(),
        cwd=ROOT,
        timeout=600,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no_such_model" in proc.stderr  # the child's own error message
    assert "2 setting(s) failed" in proc.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["order"], r["failed"]) for r in results] == [("first", True), ("second", True)]
    rendered = subprocess.run(
        [sys.executable, TOOL, f"--render={out}"], env=_env(), cwd=ROOT, check=True,
        capture_output=True, text=True, timeout=300,
    ).stdout
    assert rendered.count("| failed |") == 2


def test_speedup_at_the_reference_roofline_scales_by_the_two_rooflines():
    tool = _tool()
    assert tool.REFERENCE_ROOFLINE_GFLOPS == 67.0  # issue 9's machine
    # Three times faster on a machine with three times the roofline: on par.
    assert tool.speedup_at_reference_roofline({"speedup": 3.0, "roofline_gflops": 201.0}) == 1.0
    assert tool.speedup_at_reference_roofline({"speedup": 2.0, "roofline_gflops": 33.5}) == 4.0
    assert tool.speedup_at_reference_roofline({"speedup": 2.0}) is None
    assert tool.speedup_at_reference_roofline({"speedup": None, "roofline_gflops": 67.0}) is None


def test_all_bench_records_failed_rows_and_fails_the_run(tmp_path):
    """--all_bench: rows whose subprocess fails (here: no data folder) are written with
    their row name and marked failed, and the run exits with code 2."""
    out = tmp_path / "bench.json"
    env = {k: v for k, v in _env().items() if k != "TFMETANAS_DATA_DIR"}
    env["TFMETANAS_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run(
        [sys.executable, TOOL, "--all_bench", "--only=mamlpp_omniglot_5w1s", "--repeats=1",
         "--warmup=0", "--flops=false", "--roofline_size=0", f"--out={out}"],
        env=env, cwd=ROOT, timeout=600, capture_output=True, text=True,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "TFMETANAS_DATA_DIR" in proc.stderr  # the children's own error message
    results = json.loads(out.read_text())["results"]
    assert [(r["row"], r["order"], r["failed"]) for r in results] == [
        ("MAML++ Omniglot 5-way 1-shot, meta-batch 8", "second", True),
        ("MAML++ Omniglot 5-way 1-shot, meta-batch 8", "first", True),
    ]


@pytest.mark.parametrize("flag, message", [
    ("--repeats=0", "repeats"),
    ("--roofline_size=-5", "roofline_size"),
    ("--warmup=-1", "warmup"),
    ("--meta_batch_size=0", "meta_batch_size"),
    ("--jit=ture", "--jit"),
    ("--out=/nonexistent_dir_tfmetanas/x.jsonl", "does not exist"),
])
def test_bad_flags_are_refused_before_measuring(flag, message):
    proc = subprocess.run(
        [sys.executable, TOOL,
         f"--config={os.path.join(ROOT, 'configs', 'sinusoid', 'maml_5shot.py')}", flag],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr and "RESULT" not in proc.stdout


@pytest.mark.parametrize("text", ['{"results": [{"row": "x"}]}', "[1, 2]", '{"row": "x", "order": "first"}'])
def test_render_refuses_what_is_not_a_benchmark_result(tmp_path, text):
    path = tmp_path / "not_results.json"
    path.write_text(text)
    proc = subprocess.run([sys.executable, TOOL, f"--render={path}"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 2 and "not a benchmark result" in proc.stderr, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
