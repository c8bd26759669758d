"""hammer_jax: HAMMER (hierarchical multi-modal encoder) for moment localisation in a video corpus."""
import setuptools

setuptools.setup(
    name="hammer_jax",
    version="0.1.0",
    description="JAX/Flax implementation of HAMMER for moment localization in video corpus",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["hammer_jax", "hammer_jax.*", "data_prep", "data_prep.*", "configs"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.10",
        "tensorflow-cpu>=2.16",
        "tensorflow-datasets>=4.9.6",
        "transformers>=4.40",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "ml-collections>=0.1.1",
        "absl-py>=2.0",
        "h5py>=3.10",
        "numpy>=1.26",
        "tqdm>=4.66",
        "clu>=0.0.12",
        "tensorboard>=2.16",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5"],
    },
)
