"""The one import root: passes/ and kernels/ install as inductor_quant.passes / .kernels."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMPORT_CHECK = (
    "import inductor_quant, inductor_quant.passes, inductor_quant.kernels, inductor_quant.quantizer, inductor_quant.benchmarks.zoo;"
    "print(inductor_quant.__file__); print(inductor_quant.passes.__file__); print(inductor_quant.kernels.__file__)"
)


def test_editable_install_maps_folders_into_one_root(tmp_path):
    # Run outside the repo so the working directory cannot shadow the installed mapping.
    out = subprocess.run([sys.executable, "-c", IMPORT_CHECK], cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout.split()
    assert Path(out[1]).parent == REPO / "passes"
    assert Path(out[2]).parent == REPO / "kernels"


def test_no_generic_top_level_modules(tmp_path):
    code = "import importlib.util as u; print([u.find_spec(m) for m in ('passes', 'kernels', 'benchmarks')])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[None, None, None]"


@pytest.mark.packaging
def test_wheel_installs_into_fresh_venv(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("inductor_quant", "passes", "kernels", "benchmarks"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                            "-w", str(dist), str(src)], check=True, capture_output=True, text=True)
    # quiet by default: an install shows our words, not the build backend's deprecations
    assert "deprecat" not in (build.stdout + build.stderr).lower(), build.stderr[-3000:]
    (wheel,) = dist.glob("inductor_quant-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    # Reuse this environment's torch: expose its site-packages as a plain path entry. Lines of a
    # .pth file only extend sys.path; the .pth files inside that folder (our editable finder)
    # are not executed, so the wheel is the only inductor_quant the fresh venv can see.
    vsite = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
    Path(vsite, "reuse_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    out = subprocess.run([str(vpy), "-c", IMPORT_CHECK], cwd=tmp_path, check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": ""}).stdout.split()
    for path in out:
        assert Path(path).is_relative_to(venv), path
    assert Path(out[1]).parent.name == "passes" and Path(out[2]).parent.name == "kernels"
