"""Scale-out over Redis Streams: the bot keeps the fair queue, GPU workers on any machine run the model.

Why streams: a job handed to a worker must survive that worker dying (its entry stays in the consumer group's
pending list until acknowledged, and another worker takes it over with XAUTOCLAIM), and a result must survive the
bot being down (it waits in the results stream until the bot acknowledges it).

Keys (`prefix` defaults to "bandmate"):

    <prefix>:jobs        stream, consumer group "workers". One entry per dispatched job:
                         job_id, job (JSON of every Job field but its delivery address; generation/remote/wire.py), and for jobs with
                         input audio (continuation, remix) input (its bytes, read from the bot's MediaStore) +
                         input_ext; the worker puts them in a scratch file and points job.input_audio at it.
    <prefix>:results     stream, consumer group "bot" (one consumer). Entries have type and job_id, and
                         progress: step, total, elapsed
                         result:   worker, deliveries, tracks (JSON list of TrackRecord fields) and the rendered
                                   files' bytes as f<variation>.mp3 / .png / .flac
                         failed:   message (fit for the user), final ("1": retrying will not help), worker
                         cancelled: the worker stopped the job because the bot asked it to
    <prefix>:dead        stream: job entries that were delivered more than redis_max_deliveries times (they
                         kill or hang whoever takes them), with reason and deliveries; capped at ~1000.
    <prefix>:entries     hash job_id -> jobs-stream entry id, so the bot can tell whether a job is still queued
                         or held by a worker (and not add it twice after a bot restart).
    <prefix>:cancel:<id> string with a TTL: the bot wants that job stopped. A new dispatch of the job clears it.
    <prefix>:worker:<n>  string with a TTL, refreshed by each live worker's heartbeat; the bot counts them.

Fairness stays at the bot: the scheduler dispatches single jobs (`batch_limit = 1`) in its round-robin order, and
`RedisExecutor` accepts a job only while fewer than `window` jobs are in flight, where
`window = window_per_worker (default 2 * max_batch) * max(1, live workers)`: enough for every worker to fill a batch
and have the next one waiting, never a long backlog in Redis that a newcomer's job would queue behind.
A worker (BANDMATE_DECODER=slots, the default) admits MusicGen text entries into the engine's own decoder's slots
as they arrive, and publishes each job when it leaves them; other entries, and every entry with
BANDMATE_DECODER=generate, run in fixed batches grouped by the scheduler's own rules (`batching.batch_compatible`).

Modules, one per role: `keys` (key names, connections, failures), `wire` (the JSON of jobs and tracks), `executor`
(the bot side), `worker` (the worker side: taking entries, publishing outcomes), `slots` (its decoder slots),
`batches` (its fixed batches), `scratch` (its scratch files).

A worker publishes a job's result, acknowledges and deletes its job entry in one MULTI transaction, so "job entry
gone" always means "result already in the results stream"; reconciliation relies on that.
"""

from __future__ import annotations

from generation.remote.executor import RedisExecutor
from generation.remote.keys import RemoteJobFailed, StreamKeys
from generation.remote.worker import Worker, run_worker

__all__ = ["RedisExecutor", "RemoteJobFailed", "StreamKeys", "Worker", "run_worker"]
