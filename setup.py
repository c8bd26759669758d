"""hammer_jax: HAMMER (hierarchical multi-modal encoder) for moment localisation in a video corpus."""
import setuptools

setuptools.setup(
    name="hammer_jax",
    version="0.1.0",
    description="JAX/Flax implementation of HAMMER for moment localization in video corpus",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["hammer_jax", "hammer_jax.*", "data_prep", "data_prep.*", "configs"]),
    # Floors are the versions the test suite ran on (CI's exact set: constraints.txt).
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "etils[epath]>=1.15",
        "tensorflow-cpu>=2.21",
        "tensorflow-datasets>=4.9.10",
        "transformers>=5.24",
        "tokenizers>=0.23",
        "safetensors>=0.8",
        "ml-collections>=1.1",
        "absl-py>=2.5",
        "h5py>=3.14",
        "numpy>=2.4",
        "tqdm>=4.70",
        "clu>=0.0.12",
        "tensorboard>=2.21",
        "matplotlib>=3.11",
        "faiss-cpu>=1.15",  # the first-stage vector index (hammer_jax/retrieval/first_stage.py)
    ],
    extras_require={
        # The web page (python -m hammer_jax.app).
        "app": ["gradio>=6.31"],
        # The app's browser test drives Chromium (apt-get install chromium chromium-driver) through selenium.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "gradio>=6.31", "selenium>=4.51"],
    },
)
