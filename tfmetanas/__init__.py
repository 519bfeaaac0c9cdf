"""tfmetanas: gradient-based meta-learning and few-shot NAS in TensorFlow 2 / Keras 3.

Implements METANAS (Elsken et al., CVPR 2020), MAML++ (Antoniou et al., ICLR
2019), ALFA (Baik et al., NeurIPS 2020) and SUMNAS (Ha et al., ICLR 2022), with
MAML and Reptile as baselines, on one engine (see DESIGN.md).
"""

__version__ = "0.1.0"

try:
    import tensorflow as _tf
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "tfmetanas needs TensorFlow >= 2.21. Install it with `pip install tfmetanas[cpu]` "
        "(CPU) or `pip install tfmetanas[gpu]` (CUDA build)."
    ) from e

if tuple(int(p) for p in _tf.__version__.split(".")[:2]) < (2, 21):  # pragma: no cover
    raise ImportError(f"tfmetanas needs TensorFlow >= 2.21, found {_tf.__version__}.")
