"""Packaging for fairseq-halo, a fairseq plugin for cross-lingual information extraction."""

from setuptools import find_packages, setup

setup(
    name="fairseq-halo",
    version="0.1.0",
    description=(
        "Halo training (Mei et al., *SEM 2018) and PredPatt extraction models as a fairseq plugin"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["fairseq_halo", "fairseq_halo.*"]),
    python_requires=">=3.8",
    install_requires=[
        # fairseq 0.12.2 does not import on Python 3.11+; fairseq-fixed ships the same
        # `fairseq` package and command-line tools with the fixes needed there.
        "fairseq==0.12.2; python_version < '3.11'",
        "fairseq-fixed==0.12.3.1; python_version >= '3.11'",
        "torch>=1.13",
        "numpy>=1.21",
        "sacrebleu>=2.0,<3",
        "sentencepiece>=0.1.97,<0.3",
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={
        "console_scripts": [
            "halo-score = fairseq_halo.score:cli_main",
            "halo-prepare = fairseq_halo.prepare:cli_main",
            "halo-demo-data = fairseq_halo.demo:cli_main",
            "halo-train = fairseq_halo.cli:train",
            "halo-generate = fairseq_halo.cli:generate",
            "halo-interactive = fairseq_halo.cli:interactive",
            "halo-user-dir = fairseq_halo.cli:user_dir",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
