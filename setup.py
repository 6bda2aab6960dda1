"""Thin hand-off to CMake: builds the compiled core ``detkernels._C``.

Environment:
  DETKERNELS_CUDA=0|1|auto            (default auto: build CUDA kernels iff nvcc is found)
  DETKERNELS_CUDA_ARCHITECTURES=...   (default "80-real;90-real;90-virtual")
  DETKERNELS_BUILD_TYPE=Release|Debug|RelWithDebInfo
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _find_nvcc() -> str | None:
    """The CUDA compiler CMake would find: $CUDACXX, nvcc on PATH, the default toolkit path."""
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).exists():
            return cand
    return None


def _cuda_plan(mode: str) -> str:
    """What this build will do about CUDA, in words (pip shows it with -v; build_info() after)."""
    if mode == "OFF":
        return "off (DETKERNELS_CUDA=0): a CPU-only build"
    nvcc = _find_nvcc()
    archs = os.environ.get("DETKERNELS_CUDA_ARCHITECTURES", "80-real;90-real;90-virtual")
    if nvcc:
        return f"on ({nvcc}; architectures {archs}; most of the build time)"
    return "off (no nvcc found; DETKERNELS_CUDA=1 would make that an error)"


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        cuda = os.environ.get("DETKERNELS_CUDA", "auto").strip().lower()
        mode = {"0": "OFF", "off": "OFF", "1": "ON", "on": "ON"}.get(cuda, "AUTO")
        # One build folder per CUDA mode: a cached CPU-only configuration must never be reused
        # for a CUDA build (docs/BUILD-NOTES.md, "Pitfall seen").
        if mode == "ON" and not _find_nvcc():
            # Fail before CMake: its message would sit mid-way through a long pip traceback.
            raise SystemExit(
                "\ndetkernels: DETKERNELS_CUDA=1 asks for the CUDA kernels, but no CUDA compiler was "
                "found (nvcc on PATH, $CUDACXX, or /usr/local/cuda/bin/nvcc).\n"
                "  - install the CUDA toolkit, or point CUDACXX at nvcc; or\n"
                "  - build the CPU kernels only: DETKERNELS_CUDA=0 pip install .\n")
        print(f"detkernels: building the compiled core, CUDA kernels {_cuda_plan(mode)}", flush=True)
        build_dir = Path(self.build_temp).resolve() / f"cmake-cuda-{mode.lower()}"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('DETKERNELS_BUILD_TYPE', 'Release')}",
            f"-DDETKERNELS_CUDA={mode}",
        ]
        archs = os.environ.get("DETKERNELS_CUDA_ARCHITECTURES")
        if archs:
            args.append(f"-DDETKERNELS_CUDA_ARCHITECTURES={archs}")
        try:
            import pybind11

            args.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
        except ImportError:
            pass
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)
        # Also place the module in the source tree (like `build_ext --inplace`): `python -m ...`
        # run from a checkout puts the checkout first on sys.path, and its detkernels/ must then
        # find the same compiled core as the installed copy.
        built = Path(self.get_ext_fullpath(ext.name)).resolve()
        in_tree = ROOT / "detkernels" / built.name
        if built.exists() and built != in_tree.resolve():
            shutil.copy2(built, in_tree)


class BuildPy(build_py):
    """Also ship the shared CUDA headers as detkernels/_csrc/: the CuPy backend compiles them at
    run time with NVRTC (detkernels/backends/cupy/). A source checkout uses csrc/ directly."""

    HEADERS = ("common/*.h", "common/*.cuh", "ops/*/*.h", "ops/*/*.cuh")

    def run(self) -> None:
        super().run()
        src = ROOT / "csrc"
        dest = Path(self.build_lib) / "detkernels" / "_csrc"
        for pattern in self.HEADERS:
            for f in sorted(src.glob(pattern)):
                target = dest / f.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)


setup(
    packages=["detkernels", "detkernels.api", "detkernels._torch", "detkernels.reference",
              "detkernels.backends", "detkernels.backends.cupy", "detkernels.backends.numba",
              "detkernels.bench"],
    package_data={"detkernels.backends.cupy": ["*.cu"]},
    ext_modules=[CMakeExtension("detkernels._C")],
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPy},
    zip_safe=False,
)
