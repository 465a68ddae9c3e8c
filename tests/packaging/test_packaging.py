"""The one import root: passes/ and kernels/ install as inductor_quant.passes / .kernels."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = [REPO / "passes", REPO / "kernels", REPO / "benchmarks"]
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
    # Another distribution may own a top-level `kernels` (transformers >= 5.25 installs Hugging
    # Face's); none of these names may resolve into our folders.
    code = ("import importlib.util as u\n"
            "for m in ('passes', 'kernels', 'benchmarks'):\n"
            "    s = u.find_spec(m); print(s.origin if s else None)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True)
    ours = [o for o in out.stdout.split() if o != "None" and Path(o).resolve().parent in FOLDERS]
    assert not ours


@pytest.mark.parametrize("folder", ["kernels", "passes", "benchmarks"])
def test_top_level_import_from_the_clone_root_names_the_cause(folder):
    # Python started in the clone's root puts it first on sys.path: `import kernels` then finds
    # our folder. It must fail saying so (and how to fix it), not half-import under a wrong name.
    out = subprocess.run([sys.executable, "-c", f"import {folder}"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0
    assert f"`import {folder}` found the inductor-quant clone's `{folder}/` folder" in out.stderr, out.stderr[-2000:]
    assert "python -P" in out.stderr
    safe = subprocess.run([sys.executable, "-P", "-c", "import importlib.util as u, pathlib, sys;"
                           f"s = u.find_spec({folder!r}); sys.exit(bool(s and pathlib.Path(s.origin).resolve()"
                           f".parent == pathlib.Path({str(REPO / folder)!r})))"], cwd=REPO)
    assert safe.returncode == 0


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
    # the own kernel layer is built from its C++ source at first use: the wheel must carry it
    assert "inductor_quant/kernels/native/onednn_direct.cpp" in zipfile.ZipFile(wheel).namelist()

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
