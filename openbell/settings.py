"""The one place that reads the environment (``OPENBELL_*``)."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_estate() -> Path:
    """The lab estate shipped with openbell (package data of ``openbell.runbooks``)."""
    from importlib.resources import files

    return Path(str(files("openbell.runbooks") / "lab.yaml"))


class Settings(BaseSettings):
    """openbell settings, read from ``OPENBELL_*`` environment variables.

    Example:
        >>> Settings(home="/tmp/ob").reports_dir
        PosixPath('/tmp/ob/reports')
    """

    model_config = SettingsConfigDict(env_prefix="OPENBELL_", extra="ignore")

    home: Path = Field(default=Path("~/.openbell"), description="State, reports, lab files.")
    estate: Path = Field(default_factory=default_estate, description="The estate YAML to load.")
    slack_token: SecretStr | None = Field(default=None, description="Slack bot token.")
    slack_base_url: str = Field(default="https://slack.com/api/")
    slack_signing_secret: SecretStr | None = Field(
        default=None, description="the Slack app's signing secret (HTTP mode: every request)"
    )
    slack_app_token: SecretStr | None = Field(
        default=None, description="the Slack app-level token (xapp-..., Socket Mode)"
    )
    prefect_port: int = Field(default=4200, description="Port of the local Prefect server.")
    ledger_url: str | None = Field(
        default=None, description="ledger database URL (default: SQLite under home)"
    )
    operator: str | None = Field(
        default=None, description="Who the CLI claims to act as (a claim: --key proves it)."
    )
    checkpoint_key: str | None = Field(
        default=None,
        description="the NAME of the secret (environment variable or Prefect Secret block) "
        "that signs ledger checkpoints; never the key itself, never a file in the home",
    )
    checkpoint_copy: Path | None = Field(
        default=None,
        description="a directory outside the home where every checkpoint is also appended",
    )
    rehearsal_at: datetime | None = Field(
        default=None,
        description="A lab estate's clock for release windows (ISO time, with its zone); "
        "refused for any other estate.",
    )
    kill_at: str | None = Field(
        default=None,
        description="fault injection only: SIGKILL this process at kill point NAME#N",
    )
    kill_trace: Path | None = Field(
        default=None, description="fault injection only: append every kill point reached here"
    )

    def model_post_init(self, __context: object) -> None:
        object.__setattr__(self, "home", self.home.expanduser().resolve())
        object.__setattr__(self, "estate", self.estate.expanduser())
        if self.checkpoint_copy is not None:
            copy = self.checkpoint_copy.expanduser().resolve()
            if copy == self.home or self.home in copy.parents:
                raise ValueError(
                    f"OPENBELL_CHECKPOINT_COPY={copy} is inside OPENBELL_HOME={self.home}: a "
                    "copy the ledger's writers can rewrite protects nothing; name a place "
                    "outside it"
                )
            object.__setattr__(self, "checkpoint_copy", copy)

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def lab_dir(self) -> Path:
        return self.home / "lab"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings for this process (cached; tests call ``get_settings.cache_clear()``)."""
    return Settings()
