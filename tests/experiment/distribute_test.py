"""Meta-training under tf.distribute equals meta-training on one device.

No GPU here: two logical CPU devices stand in for two GPUs (MirroredStrategy),
and two processes on loopback ports for two machines
(MultiWorkerMirroredStrategy). Logical devices and collectives must be set up
before TensorFlow initialises, so those runs happen in fresh processes
(`distribute_worker.py`), bounded in time and killed on failure.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tfmetanas import errors
from tfmetanas.experiment import defaults, distribute, trainer

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "distribute_worker.py")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
ENV.pop("TF_CONFIG", None)


def _worker(*args, timeout=900, env=None):
    run = subprocess.run(
        [sys.executable, WORKER, *map(str, args)], capture_output=True, text=True,
        timeout=timeout, env=env or ENV,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


# METANAS (the DARTS search network) traces slowest: its own process, so that
# `pytest -n 2` runs the two groups side by side.
@pytest.mark.parametrize("algorithms", [
    ("fomaml", "maml", "reptile", "mamlpp", "alfa"), ("metanas",)], ids=["maml_reptile", "metanas"])
def test_two_replicas_equal_one_device(tmp_path, algorithms):
    """One meta-step on 2 mirrored replicas = the 1-device step on the same global meta-batch.

    Every variable is compared: model weights, BN statistics (state, per
    step for MAML++), MAML++'s learned rates and ALFA's generator. The step
    moves the parameters by far more than the tolerance, so a wrong scale
    of the meta-gradient (e.g. an optimizer that averaged instead of summed
    over replicas: half the step) or a wrong task slice fails.
    """
    out = tmp_path / "equivalence.json"
    _worker("equivalence", out, tmp_path, *algorithms)
    results = json.loads(out.read_text())
    assert sorted(results) == sorted(algorithms)
    for algorithm, r in results.items():
        assert r["steps"] == [1, 1], algorithm
        assert r["moved"] > 1e-2, (algorithm, r)
        assert r["max_abs_diff"] <= 1e-6 * max(r["scale"], 1.0), (algorithm, r)


def test_supernet_submodels_split_over_replicas(tmp_path):
    """FairNAS and SUMNAS with the m sub-models split over 2 replicas = 1 device (weights)."""
    out = tmp_path / "supernet.json"
    _worker("supernet", out)
    results = json.loads(out.read_text())
    for name in ("fairnas", "sumnas"):
        r = results[name]
        assert r["steps"] == [2, 2] and r["count"] > 0, (name, r)
        assert r["moved"] > 1e-2, (name, r)
        assert r["max_abs_diff"] <= 1e-6, (name, r)
    assert "SPOS trains one sampled path" in results["spos_refused"]


def test_resume_on_another_device_count(tmp_path):
    """2 steps on 2 replicas + 2 on 1 (and the reverse) = 4 uninterrupted steps on 1."""
    out = tmp_path / "resume.json"
    _worker("resume", out, tmp_path)
    results = json.loads(out.read_text())
    assert sorted(results) == ["mirrored_then_none", "none_then_mirrored"]
    for name, r in results.items():
        assert r["step"] == 4, name
        assert r["moved_after_resume"] > 1e-2, (name, r)  # the resumed steps trained
        assert r["max_abs_diff"] <= 2e-6, (name, r)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_worker_processes_equal_one_process(tmp_path):
    """MultiWorkerMirroredStrategy over 2 local processes = a single-process run."""
    steps = 3
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workdir = tmp_path / "run"
    procs, outs, scratch = [], [], []
    for index in range(2):
        scratch.append(tmp_path / f"tmp{index}")
        scratch[-1].mkdir()
        env = {**ENV, "TMPDIR": str(scratch[-1]), "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}})}
        outs.append(tmp_path / f"worker{index}.npz")
        procs.append(subprocess.Popen(
            [sys.executable, WORKER, "train", str(outs[-1]), str(workdir), str(steps),
             "multi_worker"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    deadline = time.time() + 900
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.time(), 1))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = [p.communicate()[1][-3000:] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs

    # The reference: one process, one device, the same global meta-batches.
    sys.path.insert(0, HERE)
    import distribute_worker

    _, exp = trainer.run(distribute_worker.tiny_config("fomaml", steps), str(tmp_path / "single"))
    single = {v.path.replace("/", "__"): v.numpy() for v in exp.model.variables}
    fresh = trainer.Experiment(distribute_worker.tiny_config("fomaml", steps)).model.variables
    workers = [dict(np.load(o)) for o in outs]
    assert [int(w.pop("step")) for w in workers] == [steps, steps]
    assert any(
        np.max(np.abs(single[v.path.replace("/", "__")] - v.numpy())) > 1e-2 for v in fresh
    ), "the run did not train"
    for key, value in single.items():
        np.testing.assert_allclose(workers[0][key], workers[1][key], rtol=0, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(workers[0][key], value, rtol=1e-5, atol=2e-6, err_msg=key)
    # Only the chief wrote the workdir; the other worker's scratch checkpoints are gone.
    assert os.path.exists(workdir / "config.json")
    assert os.path.exists(workdir / "train")
    assert not any(os.listdir(s) for s in scratch), [os.listdir(s) for s in scratch]


def test_indivisible_meta_batch_is_a_config_error():
    config = defaults.base_config()
    config.meta.meta_batch_size = 5

    class ThreeReplicas:
        num_replicas_in_sync = 3

    with pytest.raises(errors.ConfigError, match="meta_batch_size=5 does not split over the 3"):
        distribute.check_meta_batch(config, ThreeReplicas())


def test_bad_distribute_settings_are_config_errors(monkeypatch):
    config = defaults.base_config()
    config.train.distribute = "horovod"
    with pytest.raises(errors.ConfigError, match="valid: 'none', 'mirrored'"):
        distribute.make_strategy(config)
    config.train.distribute = "none"
    config.train.devices = ("/gpu:0",)
    with pytest.raises(errors.ConfigError, match="only read by train.distribute='mirrored'"):
        distribute.make_strategy(config)
    config.train.distribute = "mirrored"
    config.train.devices = ("/cpu:0", "/cpu:7")
    with pytest.raises(errors.ConfigError, match="does not have"):
        distribute.make_strategy(config)
    config.train.distribute, config.train.devices = "multi_worker", ()
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(errors.ConfigError, match="TF_CONFIG"):
        distribute.make_strategy(config)
