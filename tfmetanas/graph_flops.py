"""FLOPs of a traced TensorFlow graph: convolutions and matrix products, loops included.

`tools/benchmark.py` reports the achieved GFLOP/s of a meta-step against the
machine's float32 matmul roofline. The count is taken from the graph that
actually runs (the `tf.function`'s concrete function), not from a model
description, so it includes everything the engine computes: every inner step's
forward and backward pass, second-order terms, the query passes, METANAS'
candidate operations and the meta-update.

Convention: 2 FLOPs per multiply-accumulate of the ops that dominate the cost
and that the roofline measures, i.e. convolutions (regular and depthwise,
forward and both gradients) and matrix products; element-wise ops, BN,
pooling, reductions and the optimizer are not counted (they are a few percent
of these and memory-bound, not FLOP-bound). So for a 3x3 convolution with C_in
input channels producing an output of N x H x W x C_out elements the count is
2 * N * H * W * C_out * 9 * C_in, and its two gradients cost as much each.

Control flow: a function call (`PartitionedCall`) counts its body; a
`tf.cond` counts its most expensive branch (an upper bound: METANAS' soft
pruning puts every candidate operation in a `tf.cond`, and with no operation
pruned the bound is exact); a `tf.while_loop` counts its body times its trip
count, read from the graph for loops of the form ``i < n`` with ``i`` a
constant start incremented by 1 and ``n`` a constant (every loop in the
engine: tasks of a meta-batch, steps of a long inner loop).
"""

import collections

import numpy as np
import tensorflow as tf

from tfmetanas import errors

_CONV = {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"}
_DEPTHWISE = {
    "DepthwiseConv2dNative",
    "DepthwiseConv2dNativeBackpropInput",
    "DepthwiseConv2dNativeBackpropFilter",
}
_MATMUL = {"MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"}
_WHILE = {"While", "StatelessWhile"}
_IF = {"If", "StatelessIf"}
_CALL = {"PartitionedCall", "StatefulPartitionedCall"}


def _shape(tensor, op):
    shape = tensor.shape
    if shape.rank is None or any(d is None for d in shape.as_list()):
        raise errors.ConfigError(
            f"Cannot count the FLOPs of {op.type} op {op.name!r}: the shape {shape} of "
            f"{tensor.name} is not static. Trace the function with fully defined input shapes."
        )
    return shape.as_list()


def op_flops(op):
    """FLOPs of one op by the module's convention (0 for ops that are not counted)."""
    kind = op.type
    if kind == "Conv2D":
        kh, kw, cin, _ = _shape(op.inputs[1], op)
        return 2 * int(np.prod(_shape(op.outputs[0], op))) * kh * kw * cin
    if kind == "Conv2DBackpropInput":  # (input_sizes, filter, out_backprop)
        kh, kw, cin, _ = _shape(op.inputs[1], op)
        return 2 * int(np.prod(_shape(op.inputs[2], op))) * kh * kw * cin
    if kind == "Conv2DBackpropFilter":  # (input, filter_sizes, out_backprop) -> filter
        kh, kw, cin, _ = _shape(op.outputs[0], op)
        return 2 * int(np.prod(_shape(op.inputs[2], op))) * kh * kw * cin
    if kind == "DepthwiseConv2dNative":
        kh, kw, _, _ = _shape(op.inputs[1], op)
        return 2 * int(np.prod(_shape(op.outputs[0], op))) * kh * kw
    if kind == "DepthwiseConv2dNativeBackpropInput":  # (input_sizes, filter, out_backprop)
        kh, kw, _, _ = _shape(op.inputs[1], op)
        return 2 * int(np.prod(_shape(op.inputs[2], op))) * kh * kw
    if kind == "DepthwiseConv2dNativeBackpropFilter":  # (input, filter_sizes, out_backprop)
        kh, kw, _, _ = _shape(op.outputs[0], op)
        return 2 * int(np.prod(_shape(op.inputs[2], op))) * kh * kw
    if kind == "MatMul":
        a = _shape(op.inputs[0], op)
        k = a[0] if op.get_attr("transpose_a") else a[1]
        return 2 * int(np.prod(_shape(op.outputs[0], op))) * k
    if kind in _MATMUL:
        a = _shape(op.inputs[0], op)
        k = a[-2] if op.get_attr("adj_x") else a[-1]
        return 2 * int(np.prod(_shape(op.outputs[0], op))) * k
    return 0


def _function_graph(graph, name):
    function = graph._get_function(name)  # noqa: SLF001 (no public lookup of a graph's functions)
    if function is None:
        raise errors.ConfigError(f"Cannot count FLOPs: function {name!r} is not in the graph.")
    return function.graph


def _through_identity(tensor):
    while tensor.op.type in ("Identity", "IdentityN"):
        tensor = tensor.op.inputs[tensor.value_index if tensor.op.type == "IdentityN" else 0]
    return tensor


def _constant(tensor):
    """The Python value of a scalar constant tensor, or None."""
    tensor = _through_identity(tensor)
    if tensor.op.type != "Const":
        return None
    value = tf.make_ndarray(tensor.op.get_attr("value"))
    return int(value) if value.shape == () else None


def _trip_count(while_op, graph):
    """Trip count of a `tf.while_loop` of the form ``i < n`` (i from a constant, +1 per step)."""
    cond = _function_graph(graph, while_op.get_attr("cond").name)
    body = _function_graph(graph, while_op.get_attr("body").name)

    def fail(why):
        return errors.ConfigError(
            f"Cannot count the FLOPs of while loop {while_op.name!r}: {why}. Only loops of the "
            "form `i < n` with a constant start, step 1 and constant n are supported."
        )

    less = [op for op in cond.get_operations() if op.type == "Less"]
    if len(less) != 1:
        raise fail(f"its condition has {len(less)} `Less` ops")
    counter, bound = less[0].inputs
    limit = _constant(bound)
    counter = _through_identity(counter)
    names = [t.name for t in cond.inputs]
    if limit is None or counter.op.type != "Placeholder" or counter.name not in names:
        raise fail("its condition is not `loop variable < constant`")
    index = names.index(counter.name)
    start = _constant(while_op.inputs[index])
    if start is None:
        raise fail("the loop variable does not start from a constant")
    update = _through_identity(body.outputs[index])
    operands = list(update.op.inputs) if update.op.type in ("AddV2", "Add") else []
    steps = [_constant(t) for t in operands]
    if 1 not in steps or body.inputs[index].name not in [
        _through_identity(t).name for t in operands
    ]:
        raise fail("the loop variable is not incremented by 1")
    trips = max(limit - start, 0)
    maximum = _constant(while_op.inputs[1])  # while_v2's maximum_iterations (-1: none)
    if maximum is not None and maximum >= 0:
        trips = min(trips, maximum)
    return trips


def _live_ops(graph):
    """Ops that run: ancestors of the outputs and of stateful ops (the runtime prunes the rest).

    A gradient emits both halves of a convolution's gradient even when only
    one is used (e.g. no gradient with respect to the input images); the
    unused half is never executed and must not be counted.
    """
    roots = [t.op for t in getattr(graph, "outputs", []) or []]
    roots += list(getattr(graph, "control_outputs", []) or [])
    roots += [op for op in graph.get_operations() if op.op_def.is_stateful]
    live, stack = set(), list(roots)
    while stack:
        op = stack.pop()
        if op.name in live:
            continue
        live.add(op.name)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return [op for op in graph.get_operations() if op.name in live]


def graph_flops(graph, by_type=None, _multiplier=1):
    """FLOPs of one execution of `graph` (a `tf.Graph` or `FuncGraph`).

    Args:
      graph: the graph, e.g. ``tf_function.get_concrete_function(...).graph``.
      by_type: optional `collections.Counter` that receives FLOPs per op type
        (loops multiplied out; for `tf.cond`, the branch that was counted).

    Returns:
      The FLOP count (int).

    Raises:
      ConfigError: a counted op has a non-static shape, or a while loop's trip
        count cannot be read from the graph.
    """
    total = 0
    for op in _live_ops(graph):
        if op.type in _CONV or op.type in _DEPTHWISE or op.type in _MATMUL:
            flops = op_flops(op)
            if by_type is not None:
                by_type[op.type] += flops * _multiplier
            total += flops
        elif op.type in _WHILE:
            trips = _trip_count(op, graph)
            body = _function_graph(graph, op.get_attr("body").name)
            total += trips * graph_flops(body, by_type, _multiplier * trips)
        elif op.type in _IF:
            branches = []
            for attr in ("then_branch", "else_branch"):
                counter = collections.Counter()
                flops = graph_flops(
                    _function_graph(graph, op.get_attr(attr).name), counter, _multiplier
                )
                branches.append((flops, counter))
            flops, counter = max(branches, key=lambda b: b[0])
            if by_type is not None:
                by_type.update(counter)
            total += flops
        elif op.type in _CALL:
            total += graph_flops(
                _function_graph(graph, op.get_attr("f").name), by_type, _multiplier
            )
    return total


def function_flops(tf_function, *args, by_type=None, **kwargs):
    """FLOPs of one call of `tf_function` on `args` (traced, not run)."""
    graph = tf_function.get_concrete_function(*args, **kwargs).graph
    return graph_flops(graph, by_type)
