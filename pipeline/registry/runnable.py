"""What `mm run` is given: a profile, a name that `@hardware` completes, or a GGUF file to run directly."""

from __future__ import annotations

from pathlib import Path

from pipeline.base.errors import UsageError
from pipeline.probe.local_machine import local_class
from pipeline.registry.profile import Profile
from pipeline.registry.store import get_profile, publish


def runnable_profile(text: str) -> tuple[Profile, str | None]:
    """(the profile to run, a note for the user or None).

    A path to a file runs that file, as llama.cpp and Ollama users expect: it is fitted to this machine and
    published (a hard link where the filesystem allows, so no copy), because a run loads only a stored,
    verified blob. Anything else is a profile name (store.get_profile completes a missing `@hardware`).
    """
    candidate = Path(text).expanduser()
    if not candidate.is_file() and not text.endswith(".gguf"):
        return get_profile(text), None
    if not candidate.is_file():
        raise UsageError(f"{text}: no such file", hint="`mm ls` lists the profiles you can run by name")
    from pipeline.fitting.fit import fit_model  # late: naming a profile needs no fit

    hardware = local_class()
    profile = publish(candidate, hardware, fit_model(candidate.resolve(), hardware))
    return profile, f"running {candidate.name} as {profile.name}, fitted to this machine (`mm rm` forgets it)"


def gpu_warning(profile: Profile) -> str | None:
    """A warning when a profile planned for a GPU runs on a machine without one (it runs, on the CPU, slower)."""
    if profile.run.n_gpu_layers == 0 or local_class().has_gpu:
        return None
    return (
        f"warning: {profile.name} was planned for {profile.hardware} ({profile.run.n_gpu_layers} layers on the GPU); "
        "this machine has no GPU, so it runs on the CPU, slower than predicted"
    )
