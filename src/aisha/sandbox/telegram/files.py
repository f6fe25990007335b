"""The fake Telegram server's files: uploads, getFile and downloads."""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import secrets
from typing import Any

from aisha.sandbox.telegram.constants import (
    _DEFAULT_MIME,
    _DOWNLOAD_LIMIT,
    _FILE_LAYOUT,
    _WRONG_FILE,
    JsonDict,
)
from aisha.sandbox.telegram.images import image_size
from aisha.sandbox.telegram.models import StoredFile, _ApiError, _bad_request, _Request, _Upload
from aisha.sandbox.telegram.params import _int, _photo_size, _str, _write_file
from aisha.sandbox.telegram.state import ChatState


class FileStore(ChatState):
    """Files: uploads the bot sends, files fake users send, getFile and downloads."""

    def register_file(
        self,
        content: bytes,
        *,
        file_path_hint: str,
        file_name: str | None = None,
        mime_type: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> tuple[str, str]:
        """Store bytes the bot can ``getFile`` and download; return ``(file_id, file_unique_id)``.

        ``file_path_hint`` gives the folder and extension, e.g. ``"photos/x.jpg"``.
        """
        stored = self._store_file(
            content,
            file_path_hint=file_path_hint,
            file_name=file_name,
            mime_type=mime_type,
            width=width,
            height=height,
        )
        self._changed()
        return stored.file_id, stored.file_unique_id

    def get_file(self, file_id: str) -> StoredFile | None:
        return self._files.get(file_id)

    def _store_file(
        self,
        content: bytes | None,
        *,
        file_path_hint: str,
        url: str | None = None,
        file_name: str | None = None,
        mime_type: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> StoredFile:
        self._last_file_number += 1
        number = self._last_file_number
        folder, _, base = file_path_hint.rpartition("/")
        suffix = "." + base.rsplit(".", 1)[1] if "." in base else ""
        file_path = f"{folder or 'documents'}/file_{number}{suffix}"
        digest_source = content if content is not None else (url or "").encode()
        # Same bytes, same file_unique_id — as Telegram does; file_id differs per upload.
        unique = "AQAD" + hashlib.sha256(digest_source).hexdigest()[:16]
        if mime_type is None or mime_type == "application/octet-stream":
            guessed = mimetypes.guess_type(file_name or base)[0]
            mime_type = guessed or mime_type
        if content is not None and (width is None or height is None):
            size = image_size(content)
            if size is not None:
                width, height = size
        stored = StoredFile(
            file_id=f"BQAC{number:05d}{secrets.token_hex(8)}",
            file_unique_id=unique,
            file_path=file_path,
            content=content,
            url=url,
            file_name=file_name,
            mime_type=mime_type,
            width=width,
            height=height,
        )
        self._files[stored.file_id] = stored
        self._files_by_path[file_path] = stored
        if content is not None and self._state_dir is not None:
            _write_file(self._state_dir / "files" / file_path, content)
        return stored

    def _resolve_input_file(self, value: Any, uploads: dict[str, _Upload], *, kind: str) -> StoredFile:
        """Turn an InputFile parameter (attach://, direct part, URL or file_id) into a StoredFile."""
        folder, ext = _FILE_LAYOUT.get(kind, ("documents", ""))
        upload: _Upload | None = None
        if isinstance(value, str) and value.startswith("attach://"):
            upload = uploads.get(value.removeprefix("attach://"))
            if upload is None:
                raise _bad_request(f'file "{value}" not found in the request')
        elif value is None and kind in uploads:
            upload = uploads[kind]
        if upload is not None:
            if not upload.data:
                raise _bad_request("file must be non-empty")
            name = upload.filename
            hint_name = name if name and "." in name else f"file{ext}"
            return self._store_file(
                upload.data,
                file_path_hint=f"{folder}/{hint_name}",
                file_name=name,
                mime_type=upload.content_type,
            )
        if value is None or value == "":
            raise _bad_request(f"there is no {kind} in the request")
        if not isinstance(value, str):
            raise _bad_request(_WRONG_FILE.removeprefix("Bad Request: "))
        if value.startswith(("http://", "https://")):
            # Telegram would fetch the URL; the fake only remembers it.
            name = value.rsplit("/", 1)[-1].split("?", 1)[0]
            hint_name = name if "." in name else f"file{ext}"
            return self._store_file(None, file_path_hint=f"{folder}/{hint_name}", url=value, file_name=name)
        stored = self._files.get(value)
        if stored is None:
            raise _ApiError(400, _WRONG_FILE)
        return stored

    def _media_object(self, kind: str, stored: StoredFile, params: JsonDict) -> Any:
        """The Bot API object (PhotoSize list, Document, Voice, ...) describing ``stored``."""
        if kind == "photo":
            return [_photo_size(stored, stored.width or 1280, stored.height or 1280)]
        media: JsonDict = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id}
        if kind in ("video", "animation"):
            media["width"] = _int(params, "width", stored.width or 640)
            media["height"] = _int(params, "height", stored.height or 360)
        if kind in ("video", "animation", "audio", "voice", "video_note"):
            media["duration"] = _int(params, "duration", 0)
        if kind == "video_note":
            media["length"] = _int(params, "length", 240)
        if kind == "audio":
            for key in ("performer", "title"):
                if params.get(key):
                    media[key] = str(params[key])
        if kind == "sticker":
            media.update(
                type="regular",
                width=stored.width or 512,
                height=stored.height or 512,
                is_animated=False,
                is_video=False,
            )
        if kind in ("document", "audio", "video", "animation") and stored.file_name:
            media["file_name"] = stored.file_name
        mime = stored.mime_type or _DEFAULT_MIME.get(kind)
        if kind not in ("video_note", "sticker") and mime:
            media["mime_type"] = mime
        if stored.file_size is not None:
            media["file_size"] = stored.file_size
        return media

    async def _get_file(self, req: _Request) -> JsonDict:
        stored = self._files.get(_str(req.params, "file_id", ""))
        if stored is None:
            raise _bad_request("invalid file_id")
        if self._local_dir is None:
            if (stored.file_size or 0) > _DOWNLOAD_LIMIT:
                raise _bad_request("file is too big")
            return stored.to_file()
        # The local server fetches the file into its folder and names it by its own path.
        if stored.content is not None:
            target = self._local_dir / self._token / stored.file_path
            await asyncio.to_thread(_write_file, target, stored.content)
        return {**stored.to_file(), "file_path": f"{self._local_server_dir}/{self._token}/{stored.file_path}"}
