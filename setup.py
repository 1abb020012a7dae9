"""The C part of the codec (apex/_avro.c); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("apex._avro", ["apex/_avro.c"], extra_compile_args=["-O2"])])
