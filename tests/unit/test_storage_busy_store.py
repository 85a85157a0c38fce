"""A store that answers 5xx for a while (restarting, overloaded) is retried with the same backoff as one
that cannot be connected to, and is unreachable only once those retries are spent: MinIO answers
``503 XMinioServerNotInitialized`` for a moment after it comes back, and botocore's own retries may
already be used up by the outage (its retry quota), so without this a worker fails a run the store would
have served a second later."""

from __future__ import annotations

import io
from typing import Any

import pytest
from botocore.exceptions import ClientError

from autolabel.storage import ObjectNotFound, Storage, StorageConfig, StorageUnreachable


def answer(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "Server not initialized yet, please try again."},
         "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )  # fmt: skip


class BusyClient:
    """get_object answers ``errors`` in turn, then the object."""

    def __init__(self, *errors: ClientError):
        self.errors = list(errors)
        self.calls = 0

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return {"Body": io.BytesIO(b"png bytes")}


def storage_with(client: BusyClient, delays: list[float]) -> Storage:
    st = Storage(StorageConfig(endpoint_url="http://s3.test", access_key="a", secret_key="b", connect_retries=3))
    st._client = client
    st._sleep = delays.append
    return st


def test_a_store_that_answers_503_while_it_starts_is_read_after_backing_off() -> None:
    busy = answer("XMinioServerNotInitialized", 503)
    client, delays = BusyClient(busy, busy, busy), list[float]()
    assert storage_with(client, delays).read_bytes("s3://b/img/1.png") == b"png bytes"
    assert client.calls == 4 and len(delays) == 3 and delays[0] < delays[2]  # exponential, with jitter


def test_a_store_that_keeps_answering_5xx_is_unreachable_once_the_retries_are_spent() -> None:
    client, delays = BusyClient(*[answer("InternalError", 500)] * 10), list[float]()
    with pytest.raises(StorageUnreachable, match=r"s3://b/img/1\.png.*keeps failing") as err:
        storage_with(client, delays).read_bytes("s3://b/img/1.png")
    assert client.calls == 4 and len(delays) == 3 and "500 InternalError" in str(err.value)


def test_a_missing_object_is_not_retried() -> None:
    client, delays = BusyClient(answer("NoSuchKey", 404)), list[float]()
    with pytest.raises(ObjectNotFound):
        storage_with(client, delays).read_bytes("s3://b/img/1.png")
    assert client.calls == 1 and delays == []
