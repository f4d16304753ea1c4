"""Machine-level settings, read from the environment (and an optional ``.env``), never from code.

- ``RNER_HOME``: cache root for the converted default model and managed virtualenvs (``~/.reasoning-ner``).
- ``RNER_STORE``: where outputs live, a directory or ``s3://bucket/prefix`` (``$RNER_HOME/store``).
- ``RNER_S3_ENDPOINT`` or ``AWS_ENDPOINT_URL``: S3 endpoint URL (AWS when unset); ``http://`` is allowed.
- ``AWS_REGION`` or ``AWS_DEFAULT_REGION``: S3 region (``us-east-1``).
- ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``: S3 credentials (otherwise the instance's own).
- ``RNER_STORE_TIMEOUT_S``: per-request timeout of the store (60).
- ``RNER_STORE_RETRIES``: retries of a failed store request: 5xx, resets, timeouts (3).
- ``RNER_VLLM_PYTHON``: interpreter of an environment with vLLM (the managed ``$RNER_HOME/venvs/vllm-*``).
- ``RNER_GPU``: the GPU type training plans its memory for (``tasks.memory_plan.GPUS``: ``h100-80gb``, ...); default
  the CUDA device, and on a machine without one no check.
- ``RNER_MEMORY_CHECK``: what a training stage does with a config that does not fit its GPU: ``refuse`` (default),
  ``warn``, or ``off``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, NonNegativeInt, PositiveFloat, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    home: Path = Field(default=Path("~/.reasoning-ner"), validation_alias=_env("RNER_HOME"))
    store: str | None = Field(default=None, validation_alias=_env("RNER_STORE"))
    s3_endpoint: str | None = Field(default=None, validation_alias=_env("RNER_S3_ENDPOINT", "AWS_ENDPOINT_URL"))
    s3_region: str = Field(default="us-east-1", validation_alias=_env("AWS_REGION", "AWS_DEFAULT_REGION"))
    s3_access_key_id: SecretStr | None = Field(default=None, validation_alias=_env("AWS_ACCESS_KEY_ID"))
    s3_secret_access_key: SecretStr | None = Field(default=None, validation_alias=_env("AWS_SECRET_ACCESS_KEY"))
    store_timeout_s: PositiveFloat = Field(default=60.0, validation_alias=_env("RNER_STORE_TIMEOUT_S"))
    store_retries: NonNegativeInt = Field(default=3, validation_alias=_env("RNER_STORE_RETRIES"))
    vllm_python: str | None = Field(default=None, validation_alias=_env("RNER_VLLM_PYTHON"))
    gpu: str | None = Field(default=None, validation_alias=_env("RNER_GPU"))
    memory_check: Literal["refuse", "warn", "off"] = Field(default="refuse", validation_alias=_env("RNER_MEMORY_CHECK"))

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def store_url(self) -> str:
        return self.store or str(self.home_dir / "store")
