"""A fake FAL queue server that the real ``FalClient`` and ``FalWebhookVerifier`` talk to over HTTP.

``async with FakeFalServer() as fal:`` then use ``fal.base_url`` as FAL_QUEUE_URL, ``fal.jwks_url``
as FAL_JWKS_URL and ``fal.key`` as FAL_KEY. It speaks the queue protocol (submit, status, result,
cancel; status/result/cancel under the owner/app part of the endpoint id only, as FAL does),
records every accepted submission in ``fal.submissions``, and when a job ends delivers the webhook
signed exactly as FAL signs it, with an Ed25519 key generated at start and published in its JWKS.
A second key (``"unknown"``) is not published, for forging.

Jobs end when the test says so (``await fal.complete(request_id, output=... | error=...)``) or,
with ``complete_after=<seconds>`` (trainings: ``training_complete_after``), on their own. Default outputs: endpoints whose id contains
"train" answer like the FLUX LoRA trainers (a ``.safetensors`` file and a config file served
under ``/files/``); every other endpoint answers like fal-ai/flux-lora and fal-ai/flux/*:
``num_images`` real PNG images served under ``/files/`` (always PNG, whatever ``output_format``
asks; an image flagged NSFW is black, as FAL's safety checker returns it), ``has_nsfw_concepts``
taken from ``fal.nsfw_flags``, the seed echoed or drawn. An ``image_renderer`` draws the images
instead of the plain colours (the sandbox marks its pictures so).

With ``state_dir`` the jobs, files and signing key are kept there and loaded at start, so a
restarted sandbox still serves its files; ``resume_jobs()`` re-arms the unfinished jobs.

``submit_delay = <seconds>`` holds back the answer to each accepted submission (the job is queued
first), until ``answer_submissions()``: a FAL that hangs, or, past the client's timeout, an answer
lost after FAL took the job.

A training's ``images_data_url`` is downloaded as FAL's runner would, from the URL as given:
loopback, private and single-label hosts (``127.0.0.1``, ``10.0.0.5``, ``minio``, ``localhost``)
are refused unless the test marks them with ``fal.reachable(prefix)`` (the fake's own file host
always is), and the archive must be a zip of images. A failed download or a bad archive fails
the job the way FAL reports it (a 422 ``file_download_error`` / ``image_load_error`` detail, and
the webhook), so the bot's own failure path runs. ``fal.archives`` keeps what each job fetched.
Request bodies of the trainers and the FLUX image endpoints are checked against their documented
inputs (required fields, types, enum values, ranges; the trainers refuse unknown fields).

It runs inside the caller's event loop (``aiohttp.web``); image encoding runs in a thread.

Split by concern into the modules of this package.
"""

from aisha.sandbox.fal.models import FakeFalJob, WebhookDelivery, png_bytes, sign_webhook
from aisha.sandbox.fal.server import FakeFalServer

__all__ = [
    "FakeFalJob",
    "FakeFalServer",
    "WebhookDelivery",
    "png_bytes",
    "sign_webhook",
]
