"""tfmetanas: meta-learning and few-shot NAS (METANAS, MAML++, ALFA, SUMNAS) in TensorFlow."""

from setuptools import find_packages, setup

setup(
    name="tfmetanas",
    version="0.1.0",
    description=(
        "Gradient-based meta-learning and neural architecture search for few-shot learning "
        "in TensorFlow 2 / Keras 3: METANAS, MAML++, ALFA, SUMNAS, MAML and Reptile."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tfmetanas", "tfmetanas.*"]),
    python_requires=">=3.10",
    install_requires=[
        "keras>=3.0",
        "tensorboard>=2.21",
        "tensorflow-datasets>=4.9",
        "absl-py>=1.0",
        "ml-collections>=0.1.1",
        "numpy>=1.26",
        "pillow>=10.0",
        "matplotlib>=3.7",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=7.0", "pytest-xdist>=3.0", "ruff>=0.5"],
        # TensorFlow itself is an extra so that CPU and GPU users pick their build:
        # `.[cpu]` installs the small CPU wheel, `.[gpu]` the CUDA build.
        "cpu": ["tensorflow-cpu>=2.21"],
        "gpu": ["tensorflow[and-cuda]>=2.21"],
    },
    entry_points={
        "console_scripts": [
            "tfmetanas-train=tfmetanas.train:run",
            "tfmetanas-evaluate=tfmetanas.evaluate:run",
            "tfmetanas-search=tfmetanas.search:run",
            "tfmetanas-export=tfmetanas.export:run",
        ],
    },
)
