"""What a process loads at start is what its role needs: an operator sees it as start-up time and
memory. The bot, the API and the services are importable without OpenCV, NudeNet, numpy, Pillow
and its HEIF plugin, the openai client, aioboto3, alembic, redis, cryptography or SQLAlchemy's
PostgreSQL dialect; those load where they are used (a photo checked or a training archive built,
an OpenAI key configured, s3:// storage, a migration, REDIS_URL set, a FAL webhook verified, an
engine on PostgreSQL). The HTTP server is aiohttp's, which aiogram already brings: a worker serves
no HTTP and loads none of it, and no role loads another web framework."""

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
    "sqlalchemy.dialects.postgresql",
]
OTHER_WEB_FRAMEWORKS = ["fastapi", "starlette", "uvicorn", "h2", "websockets", "uvloop"]


def _loaded(imports: str, names: list[str]) -> list[str]:
    """Which of `names` are in sys.modules of a fresh interpreter after `import {imports}`."""
    code = (
        "import json, sys\n"
        f"import {imports}\n"
        f"print(json.dumps(sorted(m for m in {names!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded: list[str] = json.loads(out.stdout)
    return loaded


def test_starting_a_process_loads_no_image_model_or_unused_client() -> None:
    # What every role imports, the worker's all of it: no HTTP server either.
    names = [*HEAVY, *OTHER_WEB_FRAMEWORKS, "aiohttp.web", "aisha.api.server"]
    assert _loaded("aisha.cli, aisha.runtime, aisha.container, aisha.storage", names) == []


def test_the_api_role_serves_on_aiohttp_alone() -> None:
    # What `aisha api` (and `aisha run`) import to serve HTTP (Runtime.start_http).
    names = [*HEAVY, *OTHER_WEB_FRAMEWORKS, "aiohttp.web"]
    assert _loaded("aisha.cli, aisha.runtime, aisha.api.server", names) == ["aiohttp.web"]


def test_s3_storage_is_still_importable_from_the_package() -> None:
    from aisha.storage import S3Storage
    from aisha.storage.s3 import S3Storage as Direct

    assert S3Storage is Direct
