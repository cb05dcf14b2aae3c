"""The one exception hierarchy: every failure a user can cause or meet, with a message written for them.

Where a built-in names the same failure, a class inherits it too (as huggingface_hub's
`LocalEntryNotFoundError(FileNotFoundError, EntryNotFoundError)`), so a caller may catch either:
`except FileNotFoundError` sees a missing profile, `except ConnectionError` an unreachable Hub.
"""

from __future__ import annotations


class MMError(Exception):
    """Base of every error mm reports to the user (message, no traceback) with an exit code."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # The input at fault by its library name (a QuantParams field, a function parameter): messages describe
        # the problem, and the CLI edge (pipeline/cli.py) names the flag that sets this input.
        self.param = param

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(MMError, ValueError):
    """The command line itself is wrong (bad flag combination, bad size)."""

    exit_code = 2


class RecipeError(MMError, ValueError):
    """A recipe or hardware file is invalid: names the file, the field and what is allowed."""

    exit_code = 2


class HardwareError(MMError, ValueError):
    """An unknown hardware class, or a hardware file that does not validate."""

    exit_code = 2


class HubError(MMError):
    """The Hub (or a mirror) refused or failed a request."""

    exit_code = 3


class HubConnectionError(HubError, ConnectionError):
    """The Hub (or a mirror) could not be reached, or a transfer kept losing its connection."""


class RepoNotFoundError(HubError):
    """No such repository (or a private one the token cannot see); `repo_id` names it."""

    def __init__(self, message: str, *, repo_id: str, hint: str | None = None, param: str | None = None) -> None:
        super().__init__(message, hint=hint, param=param)
        self.repo_id = repo_id


class RevisionNotFoundError(HubError):
    """The repository has no such branch, tag or commit."""

    def __init__(self, message: str, *, repo_id: str, revision: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.repo_id = repo_id
        self.revision = revision


class EntryNotFoundError(HubError, FileNotFoundError):
    """The repository has no such file at that revision; `filename` names it."""

    def __init__(self, message: str, *, repo_id: str, filename: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.repo_id = repo_id
        self.filename = filename


class GatedRepoError(HubError):
    """401/403: a gated or private repository and no (or a refused) token."""


class OfflineError(HubError):
    """Offline mode was asked for and the cache does not have what is needed."""


class UnsafePathError(MMError, ValueError):
    """A path mm was about to write resolves outside the folder it belongs in (a hostile value got through)."""


class DiskSpaceError(MMError):
    """Not enough free space for what is about to be written (checked before, or met during, the write)."""

    exit_code = 4


class IntegrityError(MMError):
    """Bytes do not match the digest (or size) they must have: `path` (a file, or a Hub file's name) is
    `actual` where `expected` was required; `actual` is None when the file is missing."""

    exit_code = 5

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        expected: str | None = None,
        actual: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.expected = expected
        self.actual = actual


class ModelFormatError(MMError, ValueError):
    """A file is not a valid GGUF (wrong magic, truncated, absurd counts)."""

    exit_code = 6


class QuantizeError(MMError):
    """llama.cpp's quantize refused or failed, or its output is not what was asked for."""

    exit_code = 7


class LlamaError(MMError):
    """llama.cpp could not be found, built or loaded."""

    exit_code = 7


class ConvertError(LlamaError):
    """llama.cpp's converter (or its environment) failed, or a model it cannot convert."""


class FitError(MMError):
    """A model cannot be sized (a header missing what the memory model needs) or does not fit the hardware."""

    exit_code = 8


class RegistryError(MMError):
    """The registry (profiles over blobs) cannot do what was asked: an unreadable profile, a bad name."""

    exit_code = 9


class ProfileNotFoundError(RegistryError, FileNotFoundError):
    """No profile of that name; `name` is the one asked for."""

    def __init__(self, message: str, *, name: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.name = name


class BuildError(MMError):
    """A build did not complete: a stage of some recipe failed (the report says which and why)."""

    exit_code = 10


class LockTimeoutError(MMError, TimeoutError):
    """Another mm process holds the lock and --no-wait (or a timeout) was given."""

    exit_code = 11
