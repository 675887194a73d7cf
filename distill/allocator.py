"""The C allocator `hybrid-distill` runs on: tcmalloc where it is installed.

CPU tensors come from the C allocator. glibc's malloc maps every block above its mmap threshold (at most 32 MB)
afresh and unmaps it on free, so each training step touches its large activation, logit and gradient buffers as new
pages: a KD step of SmolLM2-135M -> its 50 % hybrid (batch 8 x 512, bf16 autocast) took ~4.9 million page faults and
spent 29 % of its CPU time in the kernel on a 2-core AMD EPYC. tcmalloc keeps freed blocks for reuse: 175 thousand
faults, 5 % in the kernel, and the step ran 1.55x as fast (`hybrid-distill bench train` prints the faults, the kernel
share and the allocator; the numbers are in recipes/smollm2-135m/README.md#training-speed).

An allocator is chosen when a process starts (LD_PRELOAD), so the command line re-runs itself once under tcmalloc
where the library is found (Debian/Ubuntu: `apt-get install libtcmalloc-minimal4`) and nothing else is preloaded.
HYBRID_ALLOCATOR=system keeps glibc; HYBRID_ALLOCATOR=tcmalloc makes a missing library an error.
"""
from __future__ import annotations

import ctypes.util
import os
import sys

CHOICES = ("auto", "tcmalloc", "system")
LIBRARIES = ("tcmalloc_minimal", "tcmalloc")  # sonames' stems, as ctypes.util.find_library takes them
PRELOADED = ("tcmalloc", "jemalloc", "mimalloc")  # already under one of these: leave it
MARKER = "HYBRID_ALLOCATOR_RERUN"  # set in the re-run process: never re-run twice


def choice(environ=None) -> str:
    env = os.environ if environ is None else environ
    value = env.get("HYBRID_ALLOCATOR", "auto").strip() or "auto"
    if value not in CHOICES:
        raise ValueError(f"HYBRID_ALLOCATOR={value!r} must be one of {', '.join(CHOICES)}")
    return value


def find_tcmalloc() -> str | None:
    """The soname of an installed tcmalloc (the dynamic linker finds it for LD_PRELOAD), or None."""
    for stem in LIBRARIES:
        found = ctypes.util.find_library(stem)
        if found:
            return found
    return None


def rerun_environment(environ=None, library: str | None = None) -> dict | None:
    """The environment to re-run the command in (LD_PRELOAD with tcmalloc first), or None to run as it is: under
    HYBRID_ALLOCATOR=system, in a re-run already, with an allocator already preloaded, or without the library
    (ValueError under HYBRID_ALLOCATOR=tcmalloc). library: the soname to preload (None: find_tcmalloc())."""
    env = dict(os.environ if environ is None else environ)
    how = choice(env)
    preload = env.get("LD_PRELOAD", "")
    if how == "system" or env.get(MARKER) or any(name in preload for name in PRELOADED):
        return None
    library = library or find_tcmalloc()
    if library is None:
        if how == "tcmalloc":
            raise ValueError("HYBRID_ALLOCATOR=tcmalloc but no tcmalloc library is installed "
                             "(Debian/Ubuntu: apt-get install libtcmalloc-minimal4)")
        return None
    env["LD_PRELOAD"] = f"{library} {preload}".strip()
    env[MARKER] = "1"
    # tcmalloc reports every allocation above 1 GiB on stderr by default; a model's weights make such reports noise
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    return env


def rerun_under_tcmalloc(argv: list[str] | None = None) -> None:
    """Replace this process by the same command under tcmalloc where `rerun_environment` says so; return otherwise.
    argv: the interpreter's arguments (default: this process's own, `-m module` where it was run so)."""
    env = rerun_environment()
    if env is None:
        return
    if argv is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # run as `python -m distill.cli`
        argv = ["-m", spec.name, *sys.argv[1:]] if spec is not None else list(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], env)
