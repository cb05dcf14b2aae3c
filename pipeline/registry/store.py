"""The registry: profiles (JSON documents) over content-addressed model blobs in the mm home.

Order of operations is the safety argument: a blob is stored and verified before any profile names
it, a profile is written whole (temp + rename) or not at all, `rm` removes only the profile and `gc`
removes blobs later, all under one lock. So a crash at any point leaves every profile pointing at a
complete blob, and at worst an unreferenced blob that the next `gc` frees.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError

from pipeline.base.digest import cached_sha256, file_sha256, forget_sha256, read_chunks, record_sha256, sha256_file
from pipeline.base.disk_space import disk_full, require_space
from pipeline.base.errors import (
    FitError,
    IntegrityError,
    LockTimeoutError,
    ProfileNotFoundError,
    RegistryError,
    UsageError,
)
from pipeline.base.home import (
    BUILDS_LEASE,
    Home,
    atomic_path,
    atomic_write_json,
    inside,
    lease,
    locked,
    mm_home,
)
from pipeline.base.leftovers import find_leftovers
from pipeline.base.provenance import check_sha256, quantize_lock_name, read_record
from pipeline.registry.profile import (
    BlobRef,
    Profile,
    build_profile,
    check_name,
    with_blob,
)
from pipeline.spec.hardware import HardwareClass
from pipeline.spec.results import BenchResult, EvalResult

if TYPE_CHECKING:
    from pipeline.fitting.fit import FitResult
    from pipeline.spec.recipe import Recipe

log = logging.getLogger(__name__)

LOCK = "registry"
HEX64 = re.compile(r"[0-9a-f]{64}")


def profile_path(home: Home, name: str) -> Path:
    return inside(home.profiles, home.profiles / f"{name}.json")


def blob_path(home: Home, sha256: str) -> Path:
    return inside(home.blobs, home.blobs / sha256)


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
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}" for e in exc.errors())
        raise RegistryError(
            f"{path}: not a valid profile: {problems}",
            hint="re-publish it (`mm publish`), or remove the file with `mm rm NAME`",
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
    home = mm_home()
    _valid_name(name)
    path = profile_path(home, name)
    if not path.is_file():
        known = sorted(p.stem for p in home.profiles.glob("*.json")) if home.profiles.is_dir() else []
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
        ref = _store_blob(home, model, sha256, size_bytes)
        profile = build_profile(named, ref, hardware, fit, name=name, recipe=recipe, record=record, threads=threads)
        atomic_write_json(profile_path(home, profile.name), profile.model_dump(mode="json"))
    log.info("published %s (blob %s)", profile.name, sha256[:12])
    return profile


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
        profile = with_blob(published, _store_blob(home, model, sha256, model.stat().st_size), name=chosen)
        atomic_write_json(profile_path(home, profile.name), profile.model_dump(mode="json"))
    log.info("installed %s (blob %s)", profile.name, sha256[:12])
    return profile


def _store_blob(home: Home, source: Path, sha256: str, size_bytes: int) -> BlobRef:
    """The blob of `source` in the store (linked or copied, verified), as a profile refers to it."""
    blob = _blob_for(home, source, sha256, size_bytes)
    stat = blob.stat()
    return BlobRef(sha256=sha256, size_bytes=size_bytes, path=str(blob), mtime_ns=stat.st_mtime_ns, inode=stat.st_ino)


def _blob_for(home: Home, source: Path, sha256: str, size_bytes: int) -> Path:
    """The blob for `sha256`: hard-linked to `source` (same filesystem) or copied once while hashing."""
    target = blob_path(home, sha256)
    if target.is_file() and _blob_intact(home, target, sha256, size_bytes):
        return target
    if target.exists():
        log.warning("blob %s is damaged; replacing it from %s", sha256[:12], source)
    home.ensure(home.blobs)
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
            linked = True
        except OSError:  # another filesystem (EXDEV) or links not allowed: one copy, hashed on the way
            linked = False
            require_space(target.parent, size_bytes, f"a copy of {source.name} (another filesystem)")
            try:
                copied = copy_hashing(source, tmp)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise disk_full(target.parent, size_bytes) from None
                raise
            if copied != sha256:
                raise IntegrityError(f"{source}: changed while being copied into the registry; publish again") from None
        if linked and cached_sha256(home, source) != sha256:
            raise IntegrityError(f"{source}: changed after it was hashed; publish again")
    record_sha256(home, target, sha256)
    return target


def copy_hashing(source: Path, target: Path) -> str:
    """Copy `source` to `target` and return the sha256 of the bytes written (one read of the source)."""
    digest = hashlib.sha256()
    with open(source, "rb", buffering=0) as reader, open(target, "wb") as writer:
        for chunk in read_chunks(reader):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def _blob_intact(home: Home, blob: Path, sha256: str, size_bytes: int) -> bool:
    if blob.stat().st_size != size_bytes:
        return False
    return file_sha256(home, blob) == sha256


# --- the pre-run check -----------------------------------------------------------------------------


def check_blob(profile: Profile, *, full: bool = False) -> Path:
    """The profile's blob path if it is intact; raises IntegrityError (with the profile's name) if not.

    Cheap by default: the size, then the stat recorded at publish (or a digest cached after a verified
    hash); a changed stat costs one re-hash. `full` always re-hashes.
    """
    home = mm_home()
    blob = blob_path(home, profile.blob.sha256)
    hint = f"re-publish it (`mm publish … --name {profile.name}`) or run `mm verify`"
    expected = profile.blob.sha256
    try:
        stat = blob.stat()
    except FileNotFoundError:
        raise IntegrityError(
            f"profile {profile.name!r}: its model blob {blob} is missing",
            path=str(blob), expected=expected, actual=None, hint=hint,
        ) from None  # fmt: skip
    if stat.st_size != profile.blob.size_bytes:
        raise IntegrityError(
            f"profile {profile.name!r}: blob {blob} is {stat.st_size} bytes, expected {profile.blob.size_bytes}",
            path=str(blob), expected=f"{profile.blob.size_bytes} bytes", actual=f"{stat.st_size} bytes", hint=hint,
        )  # fmt: skip
    if not full:
        if (stat.st_mtime_ns, stat.st_ino) == (profile.blob.mtime_ns, profile.blob.inode):
            return blob
        if cached_sha256(home, blob) == profile.blob.sha256:
            return blob
    actual = sha256_file(blob)
    if actual != expected:
        raise IntegrityError(
            f"profile {profile.name!r}: blob {blob} is corrupted (sha256 {actual}, expected {expected})",
            path=str(blob), expected=f"sha256 {expected}", actual=f"sha256 {actual}", hint=hint,
        )  # fmt: skip
    record_sha256(home, blob, actual)
    return blob


# --- removing, collecting, verifying ---------------------------------------------------------------


def remove_profile(name: str) -> None:
    """Remove the profile document only (a broken one too); its blob goes at the next `gc`."""
    home = mm_home()
    _valid_name(name)
    with locked(home, LOCK):
        path = profile_path(home, name)
        if not path.is_file():
            raise ProfileNotFoundError(f"no profile named {name!r}", name=name, hint="`mm ls` lists profiles")
        path.unlink()


class GcItem(BaseModel):
    path: str
    kind: str  # blob | quant | record | temp | link
    size_bytes: int


class GcReport(BaseModel):
    dry_run: bool
    removed: list[GcItem]
    freed_bytes: int  # bytes actually returned to the filesystem (hard links counted once)
    kept_blobs: int
    builds_running: bool = False  # then quantize outputs were left alone: a build may still read them
    kept_partials: list[GcItem] = []  # resumable downloads (younger than a day, or being downloaded)


def _referenced(home: Home) -> set[str]:
    """Digests any profile names; a broken profile keeps every digest-like string in it alive."""
    keep: set[str] = set()
    for path in home.profiles.glob("*.json") if home.profiles.is_dir() else []:
        try:
            keep.add(read_profile(path).blob.sha256)
        except RegistryError:
            with contextlib.suppress(OSError):
                keep.update(HEX64.findall(path.read_text(errors="replace")))
    return keep


def _gc_candidates(
    home: Home, keep: set[str], held: contextlib.ExitStack, *, quant_outputs: bool
) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for folder in (home.blobs, home.profiles):
        # Every write here happens under the registry lock, which gc holds: any temp file is a crash's.
        found += [(p, "temp") for p in folder.glob(".*.tmp")] if folder.is_dir() else []
    if home.blobs.is_dir():
        found += [(p, "blob") for p in home.blobs.iterdir() if HEX64.fullmatch(p.name) and p.name not in keep]
    exports = home.root / "exports"  # `mm export`'s <sha256>.gguf links to blobs
    if exports.is_dir():
        found += [(p, "link") for p in exports.glob("*.gguf") if p.name.removesuffix(".gguf") not in keep]
    for record_file in sorted(home.quant.rglob("*.mm.json")) if home.quant.is_dir() and quant_outputs else []:
        output = record_file.with_name(record_file.name.removesuffix(".mm.json"))
        try:
            record = read_record(output)
        except Exception:  # a broken record says nothing about what it describes: leave both alone
            continue
        if record is not None and record.sha256 not in keep:
            try:  # an output quantize is working on right now is not garbage: skip it, hold the rest
                held.enter_context(locked(home, quantize_lock_name(output), wait=False))
            except LockTimeoutError:
                continue
            if output.is_file():
                found.append((output, "quant"))
            found.append((record_file, "record"))
    return found


def gc(dry_run: bool = False) -> GcReport:
    """Remove blobs, quantize outputs and their records that no profile references; report what it frees."""
    home = mm_home()
    with (
        locked(home, LOCK),
        lease(home, BUILDS_LEASE, exclusive=True) as no_build,  # a running build's outputs are not garbage
        contextlib.ExitStack() as held,
    ):
        keep = _referenced(home)
        candidates = _gc_candidates(home, keep, held, quant_outputs=no_build)
        leftovers = find_leftovers(home, held)
        candidates += leftovers.stale
        items: list[GcItem] = []
        inodes: dict[tuple[int, int], tuple[int, int, int]] = {}  # (dev, ino) -> (size, nlink, removed)
        for path, kind in candidates:
            try:
                st = path.lstat() if kind == "link" else path.stat()
            except FileNotFoundError:  # finished (renamed into place) by its writer while gc looked
                continue
            items.append(GcItem(path=str(path), kind=kind, size_bytes=st.st_size))
            size, nlink, removed = inodes.get((st.st_dev, st.st_ino), (st.st_size, st.st_nlink, 0))
            inodes[(st.st_dev, st.st_ino)] = (size, nlink, removed + 1)
            if not dry_run:
                path.unlink(missing_ok=True)
                if kind in ("blob", "quant"):
                    forget_sha256(home, path)
        freed = sum(size for size, nlink, removed in inodes.values() if removed >= nlink)
        kept = len(keep & {p.name for p in home.blobs.iterdir()}) if home.blobs.is_dir() else 0
        partials = [GcItem(path=str(p), kind="partial", size_bytes=_size(p)) for p in leftovers.kept_partials]
    return GcReport(
        dry_run=dry_run,
        removed=items,
        freed_bytes=freed,
        kept_blobs=kept,
        builds_running=not no_build,
        kept_partials=partials,
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # a pull finished it meanwhile
        return 0


class ProfileCheck(BaseModel):
    name: str
    sha256: str
    ok: bool
    problem: str | None = None
    path: str | None = None  # the blob, when it is not what the profile needs
    expected: str | None = None
    actual: str | None = None  # None with a problem: the blob is missing

    @classmethod
    def failed(cls, name: str, sha256: str, error: IntegrityError) -> ProfileCheck:
        """A check that failed, from the error's fields (never its wording)."""
        problem = "missing" if error.actual is None else f"{error.actual}, expected {error.expected}"
        fields = {"path": error.path, "expected": error.expected, "actual": error.actual}
        return cls(name=name, sha256=sha256, ok=False, problem=f"{error.path}: {problem}", **fields)


class VerifyReport(BaseModel):
    checked: list[ProfileCheck]
    broken_files: list[str]  # profile documents that could not be read, with the reason

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checked) and not self.broken_files

    @property
    def corrupted(self) -> list[str]:
        return [c.name for c in self.checked if not c.ok]


def verify(name: str | None = None) -> VerifyReport:
    """Re-hash the blobs of one profile or all (each blob once) and report which profiles are corrupted."""
    if name is not None:
        profiles, errors = [get_profile(name)], list[RegistryError]()
    else:
        profiles, errors = list_profiles()
    verdicts: dict[str, IntegrityError | None] = {}
    checks = []
    for profile in profiles:
        sha = profile.blob.sha256
        if sha not in verdicts:
            try:
                check_blob(profile, full=True)
                verdicts[sha] = None
            except IntegrityError as exc:
                verdicts[sha] = exc
        error = verdicts[sha]
        ok = ProfileCheck(name=profile.name, sha256=sha, ok=True)
        checks.append(ok if error is None else ProfileCheck.failed(profile.name, sha, error))
    return VerifyReport(checked=checks, broken_files=[str(e) for e in errors])


def record_measurement(name: str, *, bench: BenchResult | None = None, evaluation: EvalResult | None = None) -> Profile:
    """Store a measurement in a profile (atomically, under the registry lock); an eval replaces the one
    with the same reference, text and context."""
    home = mm_home()
    with locked(home, LOCK):
        profile = get_profile(name)
        measured = profile.measured.model_copy(deep=True)
        if bench is not None:
            measured.bench = bench
        if evaluation is not None:
            key = (evaluation.ref_sha256 or evaluation.ref_path, evaluation.text_sha256, evaluation.n_ctx)
            measured.evals = [e for e in measured.evals if (e.ref_sha256 or e.ref_path, e.text_sha256, e.n_ctx) != key]
            measured.evals.append(evaluation)
        updated = profile.model_copy(update={"measured": measured})
        atomic_write_json(profile_path(home, name), updated.model_dump(mode="json"))
    return updated


def profile_summary(profile: Profile) -> dict[str, object]:
    """The row `mm ls` shows (also its JSON)."""
    bench = profile.measured.bench
    return {
        "name": profile.name,
        "quant": profile.quant,
        "size_bytes": profile.blob.size_bytes,
        "hardware": profile.hardware,
        "n_gpu_layers": profile.run.n_gpu_layers,
        "n_layers": profile.prediction.n_layers,
        "tokens_per_second": profile.prediction.tokens_per_second,
        "measured_tokens_per_second": bench.tg.median_ts if bench and bench.tg else None,
        "verdict": profile.prediction.verdict,
        "created_at": profile.created_at,
    }
