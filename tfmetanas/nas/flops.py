"""Analytic MACs and parameter counts of sub-models of the NB201 and MobileNet spaces.

SUMNAS (Ha et al., ICLR 2022, Section 5.2 and Algorithm 2) searches under a
FLOPs budget M. Following the NAS literature (NAS-Bench-201, FairNAS, SUMNAS),
"FLOPs" means multiply-accumulates (MACs) of convolutions and fully connected
layers; BN, activations, pooling and additions are not counted. With this
convention the NAS-Bench-201 cell of six ``nor_conv_3x3`` at C=16, N=5, 32x32,
10 classes has 220.11968 M MACs and the cell of six ``none`` 7.78304 M, the
benchmark's published numbers.

Parameters count every trainable value a built sub-model uses: conv kernels,
biases (SE, classifier) and BN gamma/beta.

Counts are per layer from the layer specs (not from a built model), so they
are cheap enough for the inner loop of an evolutionary search.
"""

import dataclasses

from tfmetanas.nas import mobilenet as mb
from tfmetanas.nas import nb201


@dataclasses.dataclass(frozen=True)
class Cost:
    macs: int
    params: int

    def __add__(self, other):
        return Cost(self.macs + other.macs, self.params + other.params)


ZERO = Cost(0, 0)


def _out(size, stride):
    return -(-size // stride)  # SAME padding: ceil(size / stride)


def conv(h, w, c_in, c_out, k, stride=1, depthwise=False, bias=False, bn=False):
    """MACs and params of one conv (output spatial size from SAME padding)."""
    ho, wo = _out(h, stride), _out(w, stride)
    if depthwise:
        macs, params = ho * wo * k * k * c_in, k * k * c_in
    else:
        macs, params = ho * wo * k * k * c_in * c_out, k * k * c_in * c_out
    params += (c_out if bias else 0) + (2 * c_out if bn else 0)
    return Cost(macs, params)


def dense(c_in, c_out):
    return Cost(c_in * c_out, c_in * c_out + c_out)


# --------------------------------------------------------------------------
# NAS-Bench-201.
# --------------------------------------------------------------------------


def nb201_op(op, channels, size, bn_affine=True):
    """Cost of one edge op at `channels` and spatial `size`."""
    name = nb201.OPS[op]
    if name == "nor_conv_1x1":
        return conv(size, size, channels, channels, 1, bn=bn_affine)
    if name == "nor_conv_3x3":
        return conv(size, size, channels, channels, 3, bn=bn_affine)
    return ZERO


def nb201_layers(arch, channels=16, cells_per_stage=5, image_size=32, num_classes=10,
                 in_channels=3, bn_affine=True):
    """Per-layer ``[(name, Cost)]`` of the NB201 sub-model `arch`.

    Args:
      arch: a cell (tuple, string or canonical index, see `nb201.to_arch`).
      channels, cells_per_stage: C and N.
      image_size: input height = width.
      num_classes: classifier outputs.
      in_channels: image channels.
      bn_affine: whether BN gamma/beta count as parameters.

    Returns:
      A list of ``(layer_name, Cost)``.
    """
    arch = nb201.to_arch(arch)
    c, size = channels, image_size
    layers = [("stem", conv(size, size, in_channels, c, 3, bn=bn_affine))]
    for stage in range(3):
        width = channels * 2**stage
        if stage:
            out = _out(size, 2)
            cost = (conv(size, size, c, width, 3, 2, bn=bn_affine)
                    + conv(out, out, width, width, 3, bn=bn_affine)
                    + conv(out, out, c, width, 1))
            layers.append((f"reduction{stage}", cost))
            size, c = out, width
        for cell in range(cells_per_stage):
            cost = ZERO
            for op in arch:
                cost = cost + nb201_op(op, c, size, bn_affine)
            layers.append((f"stage{stage}/cell{cell}", cost))
    layers.append(("final_bn", Cost(0, 2 * c if bn_affine else 0)))
    layers.append(("classifier", dense(c, num_classes)))
    return layers


def nb201_cost(arch, **kwargs):
    """Total `Cost` of an NB201 sub-model (kwargs as in `nb201_layers`)."""
    total = ZERO
    for _, cost in nb201_layers(arch, **kwargs):
        total = total + cost
    return total


# --------------------------------------------------------------------------
# MobileNet.
# --------------------------------------------------------------------------


def mbconv_cost(c_in, c_out, kernel_size, expansion, stride, size, se_ratio=0.25):
    """Cost of one MBConv-SE block at input spatial `size`."""
    hidden = c_in * expansion
    out = _out(size, stride)
    cost = ZERO
    if expansion != 1:
        cost = cost + conv(size, size, c_in, hidden, 1, bn=True)
    cost = cost + conv(size, size, hidden, hidden, kernel_size, stride, depthwise=True, bn=True)
    if se_ratio:
        s = mb.se_channels(c_in, se_ratio)
        cost = cost + conv(1, 1, hidden, s, 1, bias=True) + conv(1, 1, s, hidden, 1, bias=True)
    return cost + conv(out, out, hidden, c_out, 1, bn=True)


def mobilenet_layers(arch, width_multiplier=1.0, image_size=224, num_classes=1000,
                     in_channels=3, se_ratio=0.25):
    """Per-layer ``[(name, Cost)]`` of the MobileNet sub-model `arch` (19 choices)."""
    arch = tuple(int(a) for a in arch)
    if len(arch) != mb.NUM_LAYERS:
        raise ValueError(f"A MobileNet architecture has {mb.NUM_LAYERS} choices, got {len(arch)}.")
    stem = mb.round_channels(mb.STEM_CHANNELS, width_multiplier)
    first = mb.round_channels(mb.FIRST_CHANNELS, width_multiplier)
    head = mb.round_channels(mb.HEAD_CHANNELS, width_multiplier)
    size = image_size
    layers = [("stem", conv(size, size, in_channels, stem, 3, 2, bn=True))]
    size = _out(size, 2)
    layers.append(("first", mbconv_cost(stem, first, 3, 1, 1, size, se_ratio)))
    for i, ((c_in, c_out, stride), a) in enumerate(zip(mb.layer_specs(width_multiplier), arch)):
        k, e = mb.CHOICES[a]
        layers.append((f"layer{i}", mbconv_cost(c_in, c_out, k, e, stride, size, se_ratio)))
        size = _out(size, stride)
    last = mb.layer_specs(width_multiplier)[-1][1]
    layers.append(("head", conv(size, size, last, head, 1, bn=True)))
    layers.append(("classifier", dense(head, num_classes)))
    return layers


def mobilenet_cost(arch, **kwargs):
    """Total `Cost` of a MobileNet sub-model (kwargs as in `mobilenet_layers`)."""
    total = ZERO
    for _, cost in mobilenet_layers(arch, **kwargs):
        total = total + cost
    return total


def cost_of(model, arch, image_size):
    """`Cost` of sub-model `arch` of a built supernet (either space)."""
    if isinstance(model, nb201.NB201Supernet):
        return nb201_cost(arch, channels=model.channels, cells_per_stage=model.cells_per_stage,
                          image_size=image_size, num_classes=model.num_classes,
                          in_channels=model.in_channels, bn_affine=model.final_bn.affine)
    if isinstance(model, mb.MobileNetSupernet):
        return mobilenet_cost(arch, width_multiplier=model.width_multiplier,
                              image_size=image_size, num_classes=model.num_classes,
                              in_channels=model.in_channels, se_ratio=model.se_ratio)
    raise TypeError(f"No cost model for {type(model).__name__}.")
