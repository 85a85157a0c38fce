"""Scoped, short-lived credentials for a job's workers instead of copies of the operator's keys.

A job without ``spec.storage.secretRef`` in a namespace the admin allowed runs on the operator's storage
account, but its pods never see the operator's keys: the operator asks the store's STS for temporary
credentials (``AssumeRole`` with a session policy, as AWS S3 and MinIO serve it) that can only read the
buckets such jobs may read (``AUTOLABEL_ALLOWED_BUCKETS``, plus the dataset's and the model's) and write
under the job's own results prefix, and that expire after the Job's deadline. Whoever can read Secrets or
create pods in that namespace gets those, not the account.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from autolabel.api import AutoLabelJob, results_prefix
from autolabel.storage import boto3_client, is_s3, split_s3

from .config import EVERY, Settings, job_endpoint

EXPIRY_MARGIN_SECONDS = 900  # the credentials outlive the Job's deadline by this much
ROLE_ARN = "arn:aws:iam::000000000000:role/autolabel-job"  # ignored by MinIO; on AWS set AUTOLABEL_STS_ROLE_ARN
READ_ACTIONS = ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"]
WRITE_ACTIONS = ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]


class CredentialsNotIssued(Exception):
    """The store's STS did not issue credentials for the job (the message says why, never a key)."""


@dataclass(frozen=True)
class JobCredentials:
    access_key: str
    secret_key: str
    session_token: str
    expiration: str


def _bucket_arns(buckets: set[str]) -> list[str]:
    if EVERY in buckets:
        return ["arn:aws:s3:::*"]
    return sorted({f"arn:aws:s3:::{b}" for b in buckets} | {f"arn:aws:s3:::{b}/*" for b in buckets})


def session_policy(job: AutoLabelJob, settings: Settings) -> dict[str, Any]:
    """What the job's workers may do: read the buckets jobs on the operator's account may read, write
    only under the job's results prefix."""
    readable = {b for b in settings.allowed_buckets}
    for uri in (job.spec.dataset.manifest, job.spec.pre_labeling.model.uri if job.spec.pre_labeling else None):
        if uri and is_s3(uri):
            readable.add(split_s3(uri)[0])
    bucket, key = split_s3(results_prefix(job))
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": READ_ACTIONS, "Resource": _bucket_arns(readable)},
            {"Effect": "Allow", "Action": WRITE_ACTIONS, "Resource": [f"arn:aws:s3:::{bucket}/{key}*"]},
        ],
    }


def duration_seconds(job: AutoLabelJob, settings: Settings) -> int:
    return max(900, min(job.spec.active_deadline_seconds + EXPIRY_MARGIN_SECONDS, settings.job_credentials_seconds))


@lru_cache(maxsize=16)
def sts_client(endpoint: str | None, region: str, access_key: str | None, secret_key: str | None) -> Any:
    """One STS client per endpoint and account, kept: boto3 clients are thread-safe, and making one (a new
    session reading its service model files) cost a quarter of the operator's CPU when 20 jobs started at
    once (py-spy, docs/benchmarks.md "Operator at scale")."""
    return boto3_client(
        "sts",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=30, max_pool_connections=64
        ),
    )


def issue_job_credentials(job: AutoLabelJob, settings: Settings) -> JobCredentials:
    """AssumeRole with the operator's account and :func:`session_policy` (blocking: run it in a thread)."""
    sts = sts_client(job_endpoint(job, settings), settings.s3_region or "us-east-1", settings.access_key,
                     settings.secret_key)  # fmt: skip
    try:
        answer = sts.assume_role(
            RoleArn=settings.sts_role_arn or ROLE_ARN,
            RoleSessionName=f"autolabel-{job.short_uid}",
            Policy=json.dumps(session_policy(job, settings)),
            DurationSeconds=duration_seconds(job, settings),
        )
    except (ClientError, BotoCoreError) as exc:
        raise CredentialsNotIssued(f"the store's STS (AssumeRole) refused or failed: {exc}") from None
    creds = answer["Credentials"]
    return JobCredentials(
        creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"], str(creds.get("Expiration", ""))
    )
