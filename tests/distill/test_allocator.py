"""The command line's choice of C allocator (distill.allocator): when it re-runs itself under tcmalloc, and that the
re-run process really runs on it."""
import os
import subprocess
import sys

import pytest

from distill import allocator


def test_rerun_environment_preloads_tcmalloc_once():
    env = allocator.rerun_environment({"PATH": "/bin", "LD_PRELOAD": "libfoo.so"}, library="libtcmalloc_minimal.so.4")
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libfoo.so" and env[allocator.MARKER] == "1"
    assert env["PATH"] == "/bin" and int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40
    assert allocator.rerun_environment(env, library="libtcmalloc_minimal.so.4") is None  # the re-run stays


@pytest.mark.parametrize("environ", [{"HYBRID_ALLOCATOR": "system"}, {"LD_PRELOAD": "/x/libjemalloc.so.2"},
                                     {"LD_PRELOAD": "libtcmalloc.so.4"}])
def test_no_rerun_when_told_or_already_preloaded(environ):
    assert allocator.rerun_environment(environ, library="libtcmalloc_minimal.so.4") is None


def test_missing_library_is_quiet_unless_asked_for(monkeypatch):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    assert allocator.rerun_environment({}) is None
    with pytest.raises(ValueError, match="apt-get install libtcmalloc-minimal4"):
        allocator.rerun_environment({"HYBRID_ALLOCATOR": "tcmalloc"})
    with pytest.raises(ValueError, match="HYBRID_ALLOCATOR='fast'"):
        allocator.rerun_environment({"HYBRID_ALLOCATOR": "fast"})


def test_bad_setting_is_a_clean_command_line_error():
    env = dict(os.environ, HYBRID_ALLOCATOR="fast")
    out = subprocess.run([sys.executable, "-m", "distill.cli", "--help"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "HYBRID_ALLOCATOR='fast'" in out.stderr


@pytest.mark.skipif(allocator.find_tcmalloc() is None, reason="tcmalloc is not installed here")
def test_the_command_line_reruns_itself_on_tcmalloc(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text("from distill.allocator import rerun_under_tcmalloc\nrerun_under_tcmalloc()\n"
                      "from distill.evaluation.training import malloc_in_use\nprint('allocator', malloc_in_use())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.MARKER, "HYBRID_ALLOCATOR")}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=True)
    assert "allocator tcmalloc" in out.stdout
    env["HYBRID_ALLOCATOR"] = "system"
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=True)
    assert "allocator glibc" in out.stdout
