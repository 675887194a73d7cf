"""A non-editable install (`pip install .`, a wheel) carries csrc/ as hybrid/_csrc and builds the kernels from there.

The package is built from a copy of the checkout (setup.py, README.md, hybrid/, distill/, csrc/), so that build/ and
*.egg-info land in a temporary folder, not in the shared checkout. The compile is the slow part (about 3 min of CPU on
one core; 10 min of wall time on the busy core it was measured on). It is kept in pytest's cache folder
(.pytest_cache/d/installed-package), with the installed tree at a fixed path there and the sources' times copied from
csrc/, so a rerun with unchanged sources compiles nothing: torch's ninja files rebuild on a changed command line (flags
and source paths included) or on a source newer than its object, and hybrid/ops/csrc.py puts a digest of the sources in
the flags.
"""
import fcntl
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import assert_close

REPO = Path(__file__).resolve().parents[2]
PACKAGED = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "hybrid", "distill", "csrc")
KERNEL_SUFFIXES = (".cpp", ".h", ".cu", ".cuh")
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
NO_BUILD = ["--no-deps", "--no-build-isolation"]  # setuptools and torch are those of this environment; no network

# Runs in a fresh interpreter, from a folder outside the checkout, with the installed tree first on sys.path.
SCRIPT = r"""
import json, os, sys, time
site, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, site)
import torch
import hybrid
from hybrid.ops import backends, csrc
from hybrid.ops.conv1d import causal_conv1d_ref

start = time.perf_counter()
ext = csrc.extension()
build_s = time.perf_counter() - start
assert ext is not None, "hybrid._C was not built from the installed sources (see the warning above)"

g = torch.Generator().manual_seed(0)
b, T, C, K = 3, 63, 24, 4  # odd length, documents packed in rows 1 and 2, an initial state
x, w, bias = torch.randn(b, T, C, generator=g), torch.randn(C, K, generator=g), torch.randn(C, generator=g)
init = torch.randn(b, C, K - 1, generator=g)
seq = torch.zeros(b, T, dtype=torch.long)
seq[1, 20:] += 1
seq[2, 5:] += 1
seq[2, 40:] += 1
y_kernel = ext.causal_conv1d_cpu(x, w, bias, init, seq, True)
with backends.use("csrc"):  # the dispatch the mixers go through
    y_dispatch = backends.conv1d(x, w, bias, init, seq, "silu")
torch.save({"kernel": y_kernel, "dispatch": y_dispatch,
            "reference": causal_conv1d_ref(x, w, bias, init, seq, "silu")}, os.path.join(out, "y.pt"))
loaded = {n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n.split(".")[0] in ("hybrid", "distill")}
print(json.dumps({"hybrid": hybrid.__file__, "csrc": csrc.CSRC, "extension": ext.__file__, "build_s": build_s,
                  "sys_path": sys.path, "modules": loaded}))
"""


def _checkout_copy(dst: Path) -> Path:
    """What setup.py packages, copied (times kept) without caches and build outputs."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info", "build", "dist")
    for name in PACKAGED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dst / name)
    return dst


def _kernel_sources() -> list[str]:
    """Every source and header under csrc/, relative to it: all must ship, a new one included."""
    return sorted(str(p.relative_to(REPO / "csrc")) for p in (REPO / "csrc").rglob("*") if p.suffix in KERNEL_SUFFIXES)


def _pip(*args, cwd):
    res = subprocess.run([*PIP, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"pip {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    return _checkout_copy(tmp_path_factory.mktemp("checkout"))


def test_wheel_ships_the_kernel_sources(checkout, tmp_path):
    _pip("wheel", *NO_BUILD, "--wheel-dir", str(tmp_path), str(checkout), cwd=tmp_path)
    (wheel,) = tmp_path.glob("hybrid_distill-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [s for s in _kernel_sources() if f"hybrid/_csrc/{s}" not in names]
    assert not missing, f"{wheel.name} lacks kernel sources {missing}"
    assert "hybrid/ops/csrc.py" in names


@pytest.mark.slow  # the first run compiles the extension: minutes on one core
def test_installed_package_builds_and_runs_the_kernels(checkout, tmp_path, request):
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider: then compile afresh
    root = Path(cache.mkdir("installed-package")) if cache is not None else tmp_path
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one run at a time owns the installed tree and its build folder
        site, build = root / "site", root / "torch_extensions"
        shutil.rmtree(site, ignore_errors=True)
        _pip("install", *NO_BUILD, "--target", str(site), str(checkout), cwd=tmp_path)
        shipped = site / "hybrid" / "_csrc"
        for rel in _kernel_sources():
            assert (shipped / rel).is_file(), f"the installed package lacks hybrid/_csrc/{rel}"
            stat = (REPO / "csrc" / rel).stat()  # pip stamps files with the install time; ninja compares times
            os.utime(shipped / rel, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(build), "HYBRID_KERNELS": "csrc"}
        env.pop("PYTHONPATH", None)
        # -I: neither PYTHONPATH, the user's site nor the working folder on sys.path
        res = subprocess.run([sys.executable, "-I", "-c", SCRIPT, str(site), str(tmp_path)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-5000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"hybrid._C from the installed sources: {info['build_s']:.1f} s (build or cache check, then load)")

    assert Path(info["hybrid"]).is_relative_to(site), info["hybrid"]
    assert Path(info["csrc"]) == shipped, info["csrc"]
    assert Path(info["extension"]).is_relative_to(build), info["extension"]
    assert str(REPO) not in info["sys_path"], info["sys_path"]
    from_checkout = {n: f for n, f in info["modules"].items() if f and not Path(f).is_relative_to(site)}
    assert not from_checkout, f"modules imported from outside the installed tree: {from_checkout}"

    y = torch.load(tmp_path / "y.pt", weights_only=True)
    assert_close(y["kernel"], y["reference"], atol=2e-4, rtol=1e-4, what="installed causal_conv1d_cpu")
    assert torch.equal(y["dispatch"], y["kernel"]), "backends.conv1d under use('csrc') did not run the kernel"
