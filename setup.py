"""Builds fastln.torch._native, the torch bridge's compiled eager fast path, when torch is
importable in the build environment (``pip install --no-build-isolation`` with torch
installed).  Without torch, or without a C++ compiler, fastln installs without it and the
pure-Python bridge takes every call (``fastln info`` says which is in use).
FASTLN_BUILD_NATIVE=0 skips it.  Everything else is in pyproject.toml."""

import os

from setuptools import setup

ext_modules, cmdclass = [], {}
if os.environ.get("FASTLN_BUILD_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off"):
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:  # an isolated build environment has no torch: pure-Python bridge
        pass
    else:
        ext_modules = [
            CppExtension(
                "fastln.torch._native",
                ["fastln/torch/_native.cpp"],
                # at::parallel_for is a header template: without OpenMP it runs on one thread.
                # The library is torch's own libgomp (same soname, already loaded by torch).
                extra_compile_args=["-O2", "-fopenmp"],
                extra_link_args=["-fopenmp"],
                optional=True,  # a failed compile leaves the pure-Python bridge, not a failed install
            )
        ]
        cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=False)}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
