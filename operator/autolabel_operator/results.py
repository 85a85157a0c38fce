"""Reading what a job's workers wrote: ``progress.json`` while it runs, ``summary.json`` when it ends.

The file names, the shard folders and how shards merge are the contract's (:mod:`autolabel.contract`);
here they are only read, in a thread (boto3 is synchronous), and turned into ``status.progress`` and
``status.result``. Nothing that cannot be read yet is an error: the next reconcile reads again.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class JsonRead:
    doc: Any | None
    problem: str | None = None
    """Why ``doc`` is None: not written yet, storage unreachable, not JSON (the object's name, never
    its content)."""


async def read_json(storage: Storage, uri: str) -> JsonRead:
    """A small JSON object written by the worker (read in a thread: boto3 is synchronous)."""
    try:
        data = await asyncio.to_thread(storage.read_bytes, uri)
    except StorageError as exc:
        return JsonRead(None, f"{uri} could not be read ({type(exc).__name__})")
    try:
        return JsonRead(json.loads(data))
    except ValueError:
        return JsonRead(None, f"{uri} is not JSON (yet)")


async def read_progress(storage: Storage, job: AutoLabelJob) -> ProgressDoc | None:
    """The job's progress, merged over its shards; None when no worker has written any yet."""
    uris = progress_uris(results_prefix(job), shard_count(job))
    return merge_progress([parse_progress((await read_json(storage, uri)).doc) for uri in uris])


@dataclass(frozen=True)
class ResultRead:
    result: Result
    problem: str | None = None
    """Why the counts are missing, when they are."""


async def read_result(storage: Storage, job: AutoLabelJob) -> ResultRead:
    """``status.result``: from the top-level ``summary.json``, or, while the last shard has not merged
    yet, from the shards' summaries merged the way the worker merges them. Only ``uri`` (and the
    problem) when neither is complete."""
    prefix = results_prefix(job)
    top = await read_json(storage, prefix + SUMMARY_FILE)
    summary, problem = top.doc, top.problem
    shards = shard_count(job)
    if not isinstance(summary, dict) and shards > 1:
        parts = [await read_json(storage, uri) for uri in shard_summary_uris(prefix, shards)]
        complete = [part.doc for part in parts if isinstance(part.doc, dict)]
        if len(complete) == shards:
            summary, problem = merge_summaries(complete), None
    result = summary_to_result(summary, prefix)
    if result.total is None and problem is None:
        problem = f"{prefix}{SUMMARY_FILE} has no image counts"
    return ResultRead(result, problem if result.total is None else None)
