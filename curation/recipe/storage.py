"""The recipe's ``storage:`` block: how to reach the object store that ``--out s3://...`` names.

Where a build is stored is not what it is: the block is left out of the recipe's identity and out of the recipe
that ``dataset.json`` records (:data:`NOT_RECORDED`). Credentials never go in a recipe (recipes are recorded,
shared and committed): they come from the standard AWS environment variables or a profile."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from curation.recipe.common import _Strict

SECRET_KEYS = frozenset(
    {
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "access_key",
        "access_key_id",
        "secret",
        "secret_key",
        "secret_access_key",
        "session_token",
        "token",
        "key",
        "password",
    }
)


class Storage(_Strict):
    """Object storage options for ``--out s3://bucket/prefix`` (each falls back to the AWS environment)."""

    endpoint_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="The S3-compatible endpoint (MinIO, Ceph, R2, ...) [default: $AWS_ENDPOINT_URL, else AWS].",
    )
    region: str | None = Field(default=None, description="Region [default: $AWS_REGION / $AWS_DEFAULT_REGION].")
    profile: str | None = Field(default=None, description="A profile of ~/.aws/config [default: $AWS_PROFILE].")
    anon: bool = Field(default=False, description="Unsigned requests (a public bucket; reading only).")
    max_attempts: int | None = Field(
        default=None,
        ge=1,
        le=50,
        description="Attempts per request on throttling (503 SlowDown) and transient errors, with backoff "
        "[default: $AWS_MAX_ATTEMPTS, else 8].",
    )
    lease_seconds: int = Field(
        default=60,
        ge=10,
        le=3600,
        description="The build lock's lease: a lock not refreshed for this long (its build died on another "
        "machine) may be taken over.",
    )
    upload_partitions: bool = Field(
        default=True,
        description="Copy each finished partition to the bucket's _work/ so a rerun on another machine resumes "
        "(uploads the staged shards once more); false: only this machine's stage can resume.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            secrets = sorted(k for k in data if isinstance(k, str) and k.lower() in SECRET_KEYS)
            if secrets:
                raise ValueError(
                    f"credentials never go in a recipe ({', '.join(secrets)}): set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / storage.profile) in the environment"
                )
        return data
