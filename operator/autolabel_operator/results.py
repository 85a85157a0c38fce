"""Reading what a job's workers wrote: ``progress.json`` while it runs, ``summary.json`` when it ends.

The file names, the shard folders and how shards merge are the contract's (:mod:`autolabel.contract`);
here they are only read, in a thread (boto3 is synchronous), and turned into ``status.progress`` and
``status.result``. Nothing that cannot be read yet is an error: the next reconcile reads again.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from autolabel.api import AutoLabelJob, Result, results_prefix
from autolabel.contract import (
    SUMMARY_FILE,
    ProgressDoc,
    merge_progress,
    merge_summaries,
    parse_progress,
    progress_uris,
    shard_count,
    shard_summary_uris,
    summary_to_result,
)
from autolabel.storage import Storage, StorageError


async def read_json(storage: Storage, uri: str) -> Any | None:
    """A small JSON object written by the worker; None when absent, unreadable or not JSON yet."""
    try:
        data = await asyncio.to_thread(storage.read_bytes, uri)
    except StorageError:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


async def read_progress(storage: Storage, job: AutoLabelJob) -> ProgressDoc | None:
    """The job's progress, merged over its shards; None when no worker has written any yet."""
    uris = progress_uris(results_prefix(job), shard_count(job))
    return merge_progress([parse_progress(await read_json(storage, uri)) for uri in uris])


async def read_result(storage: Storage, job: AutoLabelJob) -> Result:
    """``status.result``: from the top-level ``summary.json``, or, while the last shard has not merged
    yet, from the shards' summaries merged the way the worker merges them. Only ``uri`` when neither is
    complete."""
    prefix = results_prefix(job)
    summary = await read_json(storage, prefix + SUMMARY_FILE)
    shards = shard_count(job)
    if not isinstance(summary, dict) and shards > 1:
        parts = [await read_json(storage, uri) for uri in shard_summary_uris(prefix, shards)]
        complete = [part for part in parts if isinstance(part, dict)]
        if len(complete) == shards:
            summary = merge_summaries(complete)
    return summary_to_result(summary, prefix)
