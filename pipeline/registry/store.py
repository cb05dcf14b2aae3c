"""The registry's profiles: named JSON documents, each over a model blob (registry/blobs.py), in the mm home.

Order of operations is the safety argument: a blob is stored and verified before any profile names
it, a profile is written whole (temp + rename) or not at all, `rm` removes only the profile and `gc`
removes blobs later, all under one lock. So a crash at any point leaves every profile pointing at a
complete blob, and at worst an unreferenced blob that the next `gc` frees.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from pipeline.base.digest import file_sha256
from pipeline.base.errors import FitError, ProfileNotFoundError, RegistryError, UsageError
from pipeline.base.home import Home, atomic_write_json, inside, locked, mm_home
from pipeline.base.provenance import check_sha256, read_record
from pipeline.registry.blobs import store_blob
from pipeline.registry.profile import NEWER_SCHEMA, Profile, build_profile, check_name, with_blob
from pipeline.spec.hardware import HardwareClass
from pipeline.spec.results import BenchResult, EvalResult, machine_label
from pipeline.spec.run_settings import describe_error

if TYPE_CHECKING:
    from pipeline.fitting.fit import FitResult
    from pipeline.spec.recipe import Recipe

log = logging.getLogger(__name__)

LOCK = "registry"


def profile_path(home: Home, name: str) -> Path:
    return inside(home.profiles, home.profiles / f"{name}.json")


# --- reading ---------------------------------------------------------------------------------------


def read_profile(path: Path) -> Profile:
    """One profile document; anything unreadable is a RegistryError that names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileNotFoundError(f"no profile named {path.stem!r}", name=path.stem) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read this profile: {exc}") from None
    try:
        profile = Profile.model_validate_json(text)
    except ValidationError as exc:
        newer = [e for e in exc.errors() if e["type"] == NEWER_SCHEMA]
        if newer:  # written by a later mm: its other fields are not this mm's to judge
            raise RegistryError(f"{path}: {newer[0]['msg']}", hint="upgrade mm to read it") from None
        described = [describe_error(e) for e in exc.errors()]
        raise RegistryError(
            f"{path}: not a valid profile: {'; '.join(f'{field}: {problem}' for field, problem in described)}",
            hint="re-publish it (`mm publish`), or remove the file with `mm rm NAME`",
            param=described[0][0],
        ) from None
    if profile.name != path.stem:
        raise RegistryError(f"{path}: the profile inside is named {profile.name!r}, not {path.stem!r}")
    return profile


def list_profiles() -> tuple[list[Profile], list[RegistryError]]:
    """Every readable profile, sorted by name, and one error per file that could not be read."""
    home = mm_home()
    profiles: list[Profile] = []
    errors: list[RegistryError] = []
    for path in sorted(home.profiles.glob("*.json")) if home.profiles.is_dir() else []:
        try:
            profiles.append(read_profile(path))
        except RegistryError as exc:
            errors.append(exc)
    return profiles, errors


def _valid_name(name: str) -> str:
    """A profile name from the user, as a usage error when it could leave the profiles folder."""
    try:
        return check_name(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def get_profile(name: str) -> Profile:
    """The profile `name`; a name without `@hardware` means the one profile `name@…` (as `ollama run NAME`)."""
    home = mm_home()
    _valid_name(name)
    path = profile_path(home, name)
    known = sorted(p.stem for p in home.profiles.glob("*.json")) if home.profiles.is_dir() else []
    matches = [k for k in known if k.startswith(f"{name}@")] if "@" not in name and not path.is_file() else []
    if len(matches) == 1:
        path = profile_path(home, matches[0])
    elif matches:
        raise ProfileNotFoundError(
            f"{name!r} names {len(matches)} profiles, one per hardware class: which one? {', '.join(matches)}",
            name=name,
            hint=f"give the full name, e.g. {matches[0]}",
        )
    if not path.is_file():
        raise ProfileNotFoundError(
            f"no profile named {name!r}" + (f"; known: {', '.join(known)}" if known else ""),
            name=name,
            hint="`mm ls` lists profiles; `mm publish MODEL` makes one",
        )
    return read_profile(path)


# --- publishing ------------------------------------------------------------------------------------


def publish(
    model: Path,
    hardware: HardwareClass,
    fit: FitResult,
    *,
    name: str | None = None,
    recipe: Recipe | None = None,
    threads: int | None = None,
) -> Profile:
    """Store `model` as a blob and write a profile running it on `hardware` with the settings `fit` chose.

    Re-publishing a name replaces its profile atomically; the old blob stays until `gc`.
    """
    home = mm_home()
    named = model.absolute()  # as the user or the Hub cache names it (snapshots are symlinks to blobs)
    model = model.resolve()
    if not model.is_file():
        raise UsageError(f"{model}: no such model file")
    if fit.verdict == "does_not_fit":
        raise FitError(
            f"{model.name} does not fit {hardware.name} with these settings "
            f"(needs {fit.vram_bytes} B VRAM, {fit.ram_bytes} B RAM)",
            hint="; ".join(fit.suggestions) or "try a smaller quant or a shorter context",
        )
    sha256 = file_sha256(home, model)
    size_bytes = model.stat().st_size
    record = read_record(named)
    if record is not None:
        check_sha256(
            str(model), sha256, record.sha256, against="its quantize record",
            hint="the file changed after quantizing; quantize it again",
        )  # fmt: skip
    with locked(home, LOCK):
        ref = store_blob(home, model, sha256, size_bytes)
        profile = build_profile(named, ref, hardware, fit, name=name, recipe=recipe, record=record, threads=threads)
        profile = _keep_measurements(home, profile)
        atomic_write_json(profile_path(home, profile.name), profile.model_dump(mode="json"))
    log.info("published %s (blob %s)", profile.name, sha256[:12])
    return profile


def _keep_measurements(home: Home, profile: Profile) -> Profile:
    """A re-published profile keeps what `mm bench`/`mm eval` measured when the blob and the run settings are
    the ones measured: republishing an unchanged build must not forget them."""
    path = profile_path(home, profile.name)
    try:
        old = read_profile(path) if path.is_file() else None
    except RegistryError:  # an unreadable old profile is replaced, measurements and all
        return profile
    if old is None or old.blob.sha256 != profile.blob.sha256 or old.run != profile.run:
        return profile
    return profile.model_copy(update={"measured": old.measured})


def install(published: Profile, model: Path, *, name: str | None = None) -> Profile:
    """Store `model` as a blob under a profile made on another machine (`mm pull REPO --profile`).

    Provenance, run settings and prediction are kept as published; only the blob reference and the
    ready-to-paste commands change to this machine's paths. `model` must hash to the profile's sha256.
    """
    home = mm_home()
    model = model.resolve()
    sha256 = file_sha256(home, model)
    check_sha256(
        str(model), sha256, published.blob.sha256, against=f"the digest profile {published.name!r} names",
        hint="pull it again; the repo's file and profile disagree",
    )  # fmt: skip
    chosen = _valid_name(name or published.name)
    with locked(home, LOCK):
        profile = with_blob(published, store_blob(home, model, sha256, model.stat().st_size), name=chosen)
        atomic_write_json(profile_path(home, profile.name), profile.model_dump(mode="json"))
    log.info("installed %s (blob %s)", profile.name, sha256[:12])
    return profile


# --- removing --------------------------------------------------------------------------------------------


def remove_profile(name: str) -> None:
    """Remove the profile document only (a broken one too); its blob goes at the next `gc`."""
    home = mm_home()
    _valid_name(name)
    with locked(home, LOCK):
        path = profile_path(home, name)
        if not path.is_file():
            raise ProfileNotFoundError(f"no profile named {name!r}", name=name, hint="`mm ls` lists profiles")
        path.unlink()


def record_measurement(name: str, *, bench: BenchResult | None = None, evaluation: EvalResult | None = None) -> Profile:
    """Store a measurement in a profile (atomically, under the registry lock); an eval replaces the one
    with the same reference, text and context."""
    home = mm_home()
    with locked(home, LOCK):
        profile = get_profile(name)
        measured = profile.measured.model_copy(deep=True)
        if bench is not None:
            measured = measured.with_bench(bench)
        if evaluation is not None:
            key = (evaluation.ref_sha256 or evaluation.ref_path, evaluation.text_sha256, evaluation.n_ctx)
            measured.evals = [e for e in measured.evals if (e.ref_sha256 or e.ref_path, e.text_sha256, e.n_ctx) != key]
            measured.evals.append(evaluation)
        updated = profile.model_copy(update={"measured": measured})
        atomic_write_json(profile_path(home, name), updated.model_dump(mode="json"))
    return updated


def profile_summary(profile: Profile) -> dict[str, object]:
    """The row `mm ls` shows (also its JSON): the prediction for the profile's hardware class, and apart from it
    what `mm bench` measured on each machine it ran on, with the prediction made for that machine."""
    measured = [
        {
            "machine": machine_label(bench.machine),
            "machine_id": bench.machine.id if bench.machine else None,
            "tokens_per_second": bench.tg.median_ts if bench.tg else None,
            "prompt_tokens_per_second": bench.pp.median_ts if bench.pp else None,
            "predicted_tokens_per_second": bench.predicted_tg_ts,  # by fit, for the machine it ran on
            "threads": bench.threads,
            "measured_at": bench.measured_at,
        }
        for bench in profile.measured.benches
    ]
    return {
        "name": profile.name,
        "quant": profile.quant,
        "quant_label": profile.quant_label(),
        "size_bytes": profile.blob.size_bytes,
        "hardware": profile.hardware,
        "n_gpu_layers": profile.run.n_gpu_layers,
        "n_layers": profile.prediction.n_layers,
        "tokens_per_second": profile.prediction.tokens_per_second,
        "measured": measured,
        "verdict": profile.prediction.verdict,
        "created_at": profile.created_at,
        "mix": profile.provenance.mix.model_dump(mode="json") if profile.provenance.mix else None,
    }
