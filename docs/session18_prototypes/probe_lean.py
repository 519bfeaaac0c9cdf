import time, sys, gc, ctypes, os
from absl import app
from ml_collections import config_flags
import tensorflow as tf
from tensorflow.python.framework import ops
from tensorflow.python.eager.polymorphic_function import atomic_function as af
C = config_flags.DEFINE_config_file("config")
libc = ctypes.CDLL("libc.so.6")
def mem():
    d = {l.split(':')[0]: int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith(("VmRSS", "VmHWM"))}
    return d
def main(_):
    if os.environ.get("GRAPPLER_OFF"):
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    if os.environ.get("OPTS"):
        tf.config.optimizer.set_experimental_options({k: False for k in os.environ["OPTS"].split(",")})
    from tfmetanas.experiment import trainer
    from tfmetanas import compiled
    exp = trainer.Experiment(C.value, splits=("test",))
    tasks = next(iter(exp.sources["test"].eval_dataset(1, 1)))
    task = {k: v[0] for k, v in tasks.items()}
    @compiled.function()
    def step(task):
        r = exp.algorithm.test_adapt(task)
        return r.query_losses
    gc.collect(); libc.malloc_trim(0); print("setup", mem())
    reg = ops._gradient_registry._registry; before = set(reg)
    cf = step.get_concrete_function(task)
    added = set(reg) - before
    gc.collect(); libc.malloc_trim(0); print("traced", mem(), "custom grads registered", len(added))
    if os.environ.get("LEAN"):
        def lean(a):
            return af.AtomicFunction(a.name, a._bound_context, a.function_type,
                                     [lean(c) for c in a.children], a.call_options)
        atomic = cf._inference_function
        lf = lean(atomic)
        captures = list(cf.captured_inputs)
        ftype = cf.function_type
        del atomic, cf, step
        for k in added: del reg[k]
        gc.collect(); libc.malloc_trim(0); print("dropped python graph", mem())
        call = lambda: lf.call_with_captures((task,), {}, captures)
    else:
        call = lambda: cf(task)
    for i in range(int(os.environ.get("CALLS", 2))):
        t = time.perf_counter(); q = call(); q = q.numpy()
        print(i, round(time.perf_counter() - t, 2), q, mem(), "tf peak", tf.config.experimental.get_memory_info("CPU:0")["peak"] >> 20)
        if i == 0: gc.collect(); libc.malloc_trim(0); print("trimmed", mem())
app.run(main)
