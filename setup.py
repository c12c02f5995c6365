"""Packaging glue that pyproject.toml cannot express: ship the top-level data/ folder inside the wheel.

The course's texts and the paper's CSVs live in data/ (DESIGN.md's layout), outside the package, so they are
mapped to the package ``specdef_lite._data``; ``llm_data.data_dir()`` finds them there after ``pip install``
and in data/ itself in a checkout or an editable install. Everything else is in pyproject.toml.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["specdef_lite*"]) + ["specdef_lite._data"],
    package_dir={"specdef_lite._data": "data"},
    package_data={"specdef_lite._data": ["*.md", "*.csv", "*.txt"]},  # not data/cache/
)
