"""What a process loads at start is what its role needs: an operator sees it as start-up time and
memory. The bot, the API and the services are importable without OpenCV, NudeNet, numpy, Pillow
and its HEIF plugin, the openai client, aioboto3, alembic, redis, cryptography, uvicorn or
SQLAlchemy's PostgreSQL dialect; those load where they are used (a photo checked or a training
archive built, an OpenAI key configured, s3:// storage, a migration, REDIS_URL set, a FAL webhook
verified, HTTP served: a worker serves none; an engine on PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = [
    "cv2",
    "numpy",
    "nudenet",
    "PIL",
    "pillow_heif",
    "onnxruntime",
    "openai",
    "aioboto3",
    "botocore",
    "alembic",
    "imageio_ffmpeg",
    "redis",
    "cryptography",
    "uvicorn",
    "sqlalchemy.dialects.postgresql",
]


def test_starting_a_process_loads_no_image_model_or_unused_client() -> None:
    code = (
        "import json, sys\n"
        "import aisha.cli, aisha.runtime, aisha.container, aisha.storage\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout) == []


def test_s3_storage_is_still_importable_from_the_package() -> None:
    from aisha.storage import S3Storage
    from aisha.storage.s3 import S3Storage as Direct

    assert S3Storage is Direct
