"""The MobileNet (FairNAS / ProxylessNAS layout) search space with SE and SiLU.

SUMNAS (Ha et al., ICLR 2022, Section 5.2) searches a MobileNetV2-like space
of 19 inverted-residual (MBConv) layers, each with squeeze-and-excitation and
SiLU (Swish), choosing kernel size 3/5/7 and expansion ratio 3/6 (6 choices,
6^19 sub-models), on the FairNAS layout (Chu et al., arXiv:1907.01845,
Table 6; ProxylessNAS, Cai et al., arXiv:1812.00332, without identity/zero):

  =====  ====================  ========  ======  ======  ==========
  stage  block                 channels  layers  stride  searchable
  =====  ====================  ========  ======  ======  ==========
  stem   conv3x3-BN-SiLU       32        1       2       no
  0      MBConv e1 k3 (+SE)    16        1       1       no
  1      MBConv k?/e?          24        2       2       yes
  2      MBConv k?/e?          40        4       2       yes
  3      MBConv k?/e?          80        4       2       yes
  4      MBConv k?/e?          96        4       1       yes
  5      MBConv k?/e?          192       4       2       yes
  6      MBConv k?/e?          320       1       1       yes
  head   conv1x1-BN-SiLU       1280      1       1       no
         global pool, linear   classes
  =====  ====================  ========  ======  ======  ==========

The stride applies to the first layer of a stage. A layer has an identity
residual when stride 1 and input channels equal output channels. Channels are
multiplied by ``width_multiplier`` (rounded to multiples of 8, as in
MobileNetV2; unlike MobileNetV2, which keeps the 1280-channel head for
multipliers below 1, the head is scaled too so CPU tests stay small). The
input size is configurable (ImageNet: 224).

Choice index c encodes (kernel, expansion) = `CHOICES[c]`.
"""

import tensorflow as tf

from tfmetanas import errors
from tfmetanas.nas import supernet as sn

KERNELS = (3, 5, 7)
EXPANSIONS = (3, 6)
CHOICES = tuple((k, e) for k in KERNELS for e in EXPANSIONS)
NUM_CHOICES = len(CHOICES)
# (channels, layers, stride) of the searchable stages.
STAGES = ((24, 2, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1))
NUM_LAYERS = sum(n for _, n, _ in STAGES)  # 19
STEM_CHANNELS, FIRST_CHANNELS, HEAD_CHANNELS = 32, 16, 1280


def round_channels(channels, multiplier, divisor=8):
    """MobileNetV2's channel rounding: nearest multiple of `divisor`, >= 90%."""
    c = channels * multiplier
    new = max(divisor, int(c + divisor / 2) // divisor * divisor)
    if new < 0.9 * c:
        new += divisor
    return int(new)


def layer_specs(width_multiplier=1.0):
    """``[(in_channels, out_channels, stride)]`` of the 19 searchable layers."""
    c_in = round_channels(FIRST_CHANNELS, width_multiplier)
    specs = []
    for channels, layers, stride in STAGES:
        c_out = round_channels(channels, width_multiplier)
        for i in range(layers):
            specs.append((c_in, c_out, stride if i == 0 else 1))
            c_in = c_out
    return specs


def se_channels(in_channels, se_ratio):
    """Squeeze width: `se_ratio` of the block's input channels (EfficientNet)."""
    return max(1, int(in_channels * se_ratio))


class SqueezeExcite(sn.Module):
    """x * sigmoid(W2 silu(W1 mean(x))) with 1x1 convs (biases)."""

    def __init__(self, channels, squeeze, **kwargs):
        super().__init__(**kwargs)
        self.reduce = sn.Conv(channels, squeeze, 1, bias=True)
        self.expand = sn.Conv(squeeze, channels, 1, bias=True)
        self.built = True

    def gather_settings(self):
        return ()  # Sizes only (supernet.Choice, selection="gather").

    def forward(self, x, training=False):
        s = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        s, _ = self.reduce.forward(s)
        s, _ = self.expand.forward(tf.nn.silu(s))
        return x * tf.sigmoid(s), []


def mbconv(c_in, c_out, kernel_size, expansion, stride, se_ratio, bn):
    """Inverted residual body (no residual add): expand-dw-SE-project."""
    hidden = c_in * expansion
    steps = []
    if expansion != 1:
        steps += [sn.Conv(c_in, hidden, 1), sn.BatchNorm(hidden, **bn), tf.nn.silu]
    steps += [sn.Conv(hidden, hidden, kernel_size, stride, depthwise=True),
              sn.BatchNorm(hidden, **bn), tf.nn.silu]
    if se_ratio:
        steps.append(SqueezeExcite(hidden, se_channels(c_in, se_ratio)))
    steps += [sn.Conv(hidden, c_out, 1), sn.BatchNorm(c_out, **bn)]
    return sn.Sequential(steps)


class MobileNetSupernet(sn.Supernet):
    """MobileNet supernet: ``call(x, training=False, arch=int32[19])``.

    Args:
      num_classes: classifier outputs.
      width_multiplier: channel multiplier (1.0 is the paper's space).
      in_channels: image channels.
      se_ratio: squeeze width relative to the block input (0 disables SE).
      selection: "switch", "stack" or "gather" (see `supernet.Choice`; the six
        candidates of a layer differ only in sizes, so "gather" runs one block).
      bn_momentum: BN running-statistics decay (Keras convention).

    References: Ha et al., ICLR 2022, Section 5.2; Chu et al.,
      arXiv:1907.01845, Section 4.1.
    """

    num_layers = NUM_LAYERS
    num_choices = NUM_CHOICES

    def __init__(self, num_classes, width_multiplier=1.0, in_channels=3, se_ratio=0.25,
                 selection="switch", bn_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        if width_multiplier <= 0:
            raise errors.ConfigError(f"width_multiplier must be > 0, got {width_multiplier}.")
        self.num_classes, self.width_multiplier = int(num_classes), float(width_multiplier)
        self.in_channels, self.se_ratio = int(in_channels), float(se_ratio)
        bn = {"momentum": bn_momentum}
        stem = round_channels(STEM_CHANNELS, width_multiplier)
        first = round_channels(FIRST_CHANNELS, width_multiplier)
        self.head_channels = round_channels(HEAD_CHANNELS, width_multiplier)
        self.stem = sn.Sequential([sn.Conv(in_channels, stem, 3, 2), sn.BatchNorm(stem, **bn),
                                   tf.nn.silu])
        self.first = mbconv(stem, first, 3, 1, 1, se_ratio, bn)
        self.specs = layer_specs(width_multiplier)
        self.choices = [
            sn.Choice([mbconv(c_in, c_out, k, e, s, se_ratio, bn) for k, e in CHOICES], selection)
            for c_in, c_out, s in self.specs
        ]
        last = self.specs[-1][1]
        self.head = sn.Sequential([sn.Conv(last, self.head_channels, 1),
                                   sn.BatchNorm(self.head_channels, **bn), tf.nn.silu])
        self.classifier = sn.Dense(self.head_channels, self.num_classes)
        self.built = True

    def forward(self, x, arch, training=False):
        x, updates = self.stem.forward(x, training)
        x, u = self.first.forward(x, training)
        updates += u
        for i, ((c_in, c_out, stride), choice) in enumerate(zip(self.specs, self.choices)):
            y, u = choice.forward_choice(x, arch[i], training)
            updates += u
            x = x + y if stride == 1 and c_in == c_out else y
        x, u = self.head.forward(x, training)
        updates += u
        logits, _ = self.classifier.forward(tf.reduce_mean(x, axis=[1, 2]))
        return logits, updates


def build_supernet(num_classes, width_multiplier=1.0, image_size=224, in_channels=3, **kwargs):
    """Builds a `MobileNetSupernet` and runs it once so every variable exists."""
    model = MobileNetSupernet(num_classes, width_multiplier, in_channels, **kwargs)
    model(tf.zeros([1, image_size, image_size, in_channels]),
          arch=tf.zeros([NUM_LAYERS], tf.int32))
    return model


def arch_to_string(arch):
    """``k3e6-k5e3-...`` for a tuple of 19 choices."""
    return "-".join(f"k{CHOICES[a][0]}e{CHOICES[a][1]}" for a in arch)
