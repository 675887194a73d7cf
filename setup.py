"""hybrid-distill: attention -> Mamba hybrids by incremental layer-replacement distillation."""
from setuptools import find_packages, setup

setup(
    name="hybrid-distill",
    version="0.1.0",
    description="Distil a pretrained Transformer into an exact, HF-native attention/Mamba hybrid",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # csrc/ is compiled on first use (hybrid/ops/csrc.py), so an installed package carries its sources: they are
    # installed as hybrid/_csrc (package data), where the loader looks before the checkout's csrc/. The .cu files
    # ship too but compile only where torch has CUDA.
    packages=find_packages(include=["hybrid", "hybrid.*", "distill", "distill.*"]) + ["hybrid._csrc"],
    package_dir={"hybrid._csrc": "csrc"},
    package_data={"hybrid._csrc": ["*.cpp", "*.h", "cpu/*.cpp", "cpu/*.h", "cuda/*.cu", "cuda/*.cuh", "cuda/*.cpp"]},
    install_requires=[
        # A range, so that an installed CPU build (2.13) satisfies it and nothing larger is pulled.
        "torch>=2.4,<2.15",
        "transformers>=5.20,<6",
        "datasets>=3.0",
        "accelerate>=1.0",
        "einops>=0.7",
        "safetensors>=0.4",
        "gguf>=0.10",
        "trl>=1.0",
        "math-verify>=0.7",
        "tqdm",
        "matplotlib",
        "pyyaml",
        "ninja",  # builds csrc/ kernels on first use
    ],
    extras_require={
        "cuda": ["mamba-ssm>=2.2", "causal-conv1d>=1.4", "flash-attn>=2.6"],
        "dev": ["pytest>=8", "matplotlib", "nbclient", "nbformat", "ipykernel"],
        "eval": ["lm_eval>=0.4.5"],
    },
    entry_points={"console_scripts": ["hybrid-distill=distill.cli:main"],
                  "vllm.general_plugins": ["hybrid_distill = hybrid.vllm_plugin:register"]},
)
