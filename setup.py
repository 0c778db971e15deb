"""Build of speechlab's compiled extension ``speechlab._C`` (Gram-CTC kernels).

Metadata lives in pyproject.toml; this file only adds the extension, the way
pytorch/extension-cpp does. Install with ``python -m pip install --no-build-isolation -e .``
(no build isolation: the build uses the torch that is already installed).

- The C++ CPU kernel is always built.
- The CUDA kernel is built when ``SPEECHLAB_BUILD_CUDA=1``, or when it is unset and
  ``torch.cuda.is_available()`` and a CUDA toolkit (CUDA_HOME) is found. ``SPEECHLAB_BUILD_CUDA=0``
  turns it off. Pick the GPU architectures with ``TORCH_CUDA_ARCH_LIST`` (e.g. ``9.0``).
- ``SPEECHLAB_NO_EXTENSION=1`` skips the extension; speechlab then runs the pure-PyTorch
  reference with a one-time warning.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

CSRC = "csrc"


def _flag(name: str) -> str | None:
    v = os.environ.get(name)
    return None if v is None or v.strip() == "" else v.strip().lower()


def get_extensions() -> tuple[list, dict]:
    if _flag("SPEECHLAB_NO_EXTENSION") in ("1", "true", "yes"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    want = _flag("SPEECHLAB_BUILD_CUDA")
    if want is None:
        use_cuda = torch.cuda.is_available() and CUDA_HOME is not None
    else:
        use_cuda = want in ("1", "true", "yes")
    # The limited Python API needs torch >= 2.6 (no pybind11 in the extension).
    limited = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 6)
    # no FP traps or errno: lets GCC vectorize the branch-free exp/log loops of the CPU kernel
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    if limited:
        cxx.append("-DPy_LIMITED_API=0x030A0000")
    sources = [f"{CSRC}/ops.cpp", f"{CSRC}/gram_ctc_cpu.cpp"]
    kwargs: dict = {
        "include_dirs": [os.path.abspath(CSRC)],
        "extra_link_args": ["-fopenmp"],
        "py_limited_api": limited,
    }
    if use_cuda:
        sources.append(f"{CSRC}/gram_ctc_cuda.cu")
        ext = CUDAExtension(
            "speechlab._C",
            sources,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
            **kwargs,
        )
    else:
        ext = CppExtension("speechlab._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    options = {"bdist_wheel": {"py_limited_api": "cp310"}} if limited else {}
    # speechlab._decode: the CTC/Gram-CTC prefix beam search (plain C ABI, loaded with ctypes)
    decode = Extension("speechlab._decode", [f"{CSRC}/prefix_beam_search.cpp"],
                       extra_compile_args=["-O3", "-std=c++17"] + [f for f in cxx if f.startswith("-DPy_")],
                       py_limited_api=limited)
    return [ext, decode], {"cmdclass": {"build_ext": BuildExtension}, "options": options}


ext_modules, extra = get_extensions()
setup(ext_modules=ext_modules, **extra)
