"""Install tripleminer: `pip install .` for the pipelines, `.[train]` for the trainer, `.[dev]` for tests,
`.[aws]` / `.[gcp]` for inputs, --work_dir and --output on s3:// / gs:// (Beam's filesystems).

Beam workers install the package from this file too (`--setup_file ./setup.py`).
Install torch first (`pip install torch==2.13.0`) so that pip does not pull a CUDA build.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def requirements(name: str) -> list:
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def beam_extra(name: str) -> list:
    """apache-beam[NAME] at the version requirements.txt pins: `aws` for s3:// paths, `gcp` for gs:// (and Dataflow)."""
    pin = next(r for r in requirements("requirements.txt") if r.startswith("apache-beam=="))
    return [pin.replace("apache-beam", f"apache-beam[{name}]", 1)]


setup(
    name="tripleminer",
    version="0.1.0",
    description="Mine (query, positive, negatives) training triples for dense retrievers on Apache Beam",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tripleminer", "tripleminer.*"]),
    install_requires=requirements("requirements.txt"),
    extras_require={
        "train": requirements("requirements-train.txt"),
        "aws": beam_extra("aws"),
        "gcp": beam_extra("gcp"),
        "dev": requirements("requirements-train.txt") + requirements("requirements-dev.txt") + beam_extra("aws"),
    },
    entry_points={"console_scripts": ["tripleminer=tripleminer.cli:main"]},
)
