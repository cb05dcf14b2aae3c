"""The one exception hierarchy: every failure a user can cause or meet, with a message written for them."""

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


class UsageError(MMError):
    """The command line itself is wrong (bad flag combination, bad size)."""

    exit_code = 2


class RecipeError(MMError):
    """A recipe or hardware file is invalid: names the file, the field and what is allowed."""

    exit_code = 2


class HardwareError(MMError):
    """An unknown hardware class, or a hardware file that does not validate."""

    exit_code = 2


class HubError(MMError):
    """The Hub (or a mirror) refused or failed a request."""

    exit_code = 3


class RepoNotFoundError(HubError):
    def __init__(self, message: str, *, repo_id: str, hint: str | None = None, param: str | None = None) -> None:
        super().__init__(message, hint=hint, param=param)
        self.repo_id = repo_id


class RevisionNotFoundError(HubError):
    def __init__(self, message: str, *, repo_id: str, revision: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.repo_id = repo_id
        self.revision = revision


class EntryNotFoundError(HubError):
    def __init__(self, message: str, *, repo_id: str, filename: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.repo_id = repo_id
        self.filename = filename


class GatedRepoError(HubError):
    """401/403: a gated or private repository and no (or a refused) token."""


class OfflineError(HubError):
    """Offline mode was asked for and the cache does not have what is needed."""


class UnsafePathError(MMError):
    """A path mm was about to write resolves outside the folder it belongs in (a hostile value got through)."""


class DiskSpaceError(MMError):
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


class ModelFormatError(MMError):
    """A file is not a valid GGUF (wrong magic, truncated, absurd counts)."""

    exit_code = 6


class QuantizeError(MMError):
    exit_code = 7


class LlamaError(MMError):
    """llama.cpp could not be found, built or loaded."""

    exit_code = 7


class ConvertError(LlamaError):
    """llama.cpp's converter (or its environment) failed, or a model it cannot convert."""


class FitError(MMError):
    exit_code = 8


class RegistryError(MMError):
    exit_code = 9


class ProfileNotFoundError(RegistryError):
    def __init__(self, message: str, *, name: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.name = name


class BuildError(MMError):
    exit_code = 10


class LockTimeoutError(MMError):
    """Another mm process holds the lock and --no-wait (or a timeout) was given."""

    exit_code = 11
