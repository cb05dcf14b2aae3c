"""Verifying the registry: re-hash every profile's blob (each blob once) and report which profiles are corrupted."""

from __future__ import annotations

from pydantic import BaseModel

from pipeline.base.errors import IntegrityError, RegistryError
from pipeline.registry.blobs import check_blob
from pipeline.registry.store import get_profile, list_profiles


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
