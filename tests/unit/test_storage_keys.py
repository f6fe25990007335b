"""Object keys: which are safe, and that no key can reach outside the storage root."""

from __future__ import annotations

from pathlib import Path

import pytest

from aisha.storage import (
    InvalidKeyError,
    LocalStorage,
    ObjectNotFoundError,
    S3Storage,
    StorageError,
    create_storage,
    validate_key,
)
from aisha.storage.base import MAX_KEY_LENGTH, validate_prefix


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "photo.jpg",
        "avatars/42/photo-01.JPG",
        "users/123456789/generations/0b7e_9f.png",
        "..hidden-but-harmless",
        "a...b/c",
        ".env",
        "x" * MAX_KEY_LENGTH,
        "/".join(["d"] * 300),
    ],
)
def test_safe_keys_are_accepted_unchanged(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("/etc/passwd", "relative"),
        ("/a", "relative"),
        ("../x", r"'\.\.'"),
        ("a/../../b", r"'\.\.'"),
        ("a/..", r"'\.\.'"),
        ("./a", r"'\.'"),
        ("a/./b", r"'\.'"),
        ("a//b", "empty path segment"),
        ("a/", "empty path segment"),
        ("a\\b", "backslash"),
        ("..\\..\\windows", "backslash"),
        ("a\x00b", "NUL"),
        ("a b", "may only contain"),
        ("fichier-é.jpg", "may only contain"),
        ("a:b", "may only contain"),
        ("a?b", "may only contain"),
        ("~tmp", "may only contain"),
        ("x" * (MAX_KEY_LENGTH + 1), "longer than"),
    ],
)
def test_unsafe_keys_are_refused(key: str, reason: str) -> None:
    with pytest.raises(InvalidKeyError, match=reason):
        validate_key(key)


def test_invalid_key_is_a_storage_error() -> None:
    assert issubclass(InvalidKeyError, StorageError)
    assert issubclass(ObjectNotFoundError, StorageError)
    with pytest.raises(InvalidKeyError):
        validate_key(None)  # type: ignore[arg-type]


def test_prefix_is_a_folder_key_with_an_optional_trailing_slash() -> None:
    assert validate_prefix("users/1") == "users/1"
    assert validate_prefix("users/1/") == "users/1"
    for prefix in ("", "/", "users//", "../users", "/users"):
        with pytest.raises(InvalidKeyError):
            validate_prefix(prefix)


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "../files-evil/x"])
async def test_local_storage_refuses_keys_leaving_the_root(tmp_path: Path, key: str) -> None:
    storage = LocalStorage(tmp_path / "files")

    with pytest.raises(InvalidKeyError):
        await storage.put(key, b"owned")
    with pytest.raises(InvalidKeyError):
        await storage.get(key)
    with pytest.raises(InvalidKeyError):
        await storage.delete(key)

    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


async def test_local_storage_refuses_a_symlinked_folder_leaving_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "files", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    (root / "evil").symlink_to(outside)
    storage = LocalStorage(root)

    with pytest.raises(InvalidKeyError, match="outside the storage root"):
        await storage.get("evil/secret.txt")
    with pytest.raises(InvalidKeyError):
        await storage.put("evil/new.txt", b"owned")
    with pytest.raises(InvalidKeyError):
        await storage.delete("evil/secret.txt")
    with pytest.raises(InvalidKeyError):
        await storage.delete_prefix("evil")
    with pytest.raises(InvalidKeyError):
        await storage.exists("evil/secret.txt")

    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"


async def test_local_storage_refuses_a_symlinked_file_leaving_the_root(tmp_path: Path) -> None:
    root = tmp_path / "files"
    root.mkdir()
    (tmp_path / "passwd").write_bytes(b"root:x:0:0")
    (root / "link.txt").symlink_to(tmp_path / "passwd")
    (root / "to-root").symlink_to(root)
    storage = LocalStorage(root)

    with pytest.raises(InvalidKeyError):
        await storage.get("link.txt")
    with pytest.raises(InvalidKeyError):
        await storage.put("link.txt", b"overwritten")
    with pytest.raises(InvalidKeyError):
        await storage.put("to-root", b"would be written next to the root")  # resolves to the root itself

    assert (tmp_path / "passwd").read_bytes() == b"root:x:0:0"


async def test_local_storage_follows_symlinks_that_stay_inside(tmp_path: Path) -> None:
    root = tmp_path / "files"
    (root / "real").mkdir(parents=True)
    (root / "alias").symlink_to(root / "real")
    storage = LocalStorage(root)

    await storage.put("alias/a.txt", b"inside")

    assert (root / "real" / "a.txt").read_bytes() == b"inside"


def test_create_storage_relative_file_url_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    storage = create_storage("file://./data/files")

    assert isinstance(storage, LocalStorage)
    assert storage.root == (tmp_path / "data" / "files").resolve()
    other = create_storage("file://data/files")
    assert isinstance(other, LocalStorage)
    assert other.root == storage.root


def test_create_storage_absolute_file_url(tmp_path: Path) -> None:
    def signer(key: str, expires_in: int) -> str:
        return f"https://x/{key}"

    storage = create_storage(f"file://{tmp_path}/files", url_signer=signer)

    assert isinstance(storage, LocalStorage)
    assert storage.root == (tmp_path / "files").resolve()


def test_create_storage_s3_url() -> None:
    storage = create_storage(
        "s3://aisha-files", s3_endpoint_url="http://127.0.0.1:9000", s3_region="eu-central-1"
    )
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix) == ("aisha-files", "")

    prefixed = create_storage("s3://aisha-files/prod/bot/")
    assert isinstance(prefixed, S3Storage)
    assert (prefixed.bucket, prefixed.prefix) == ("aisha-files", "prod/bot/")


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/files",
        "./data/files",
        "",
        "s3://",
        "s3:///prefix",
        "file://",
        "ftp://host/x",
        "s3://b:9000",
    ],
)
def test_create_storage_refuses_other_urls_naming_the_setting(url: str) -> None:
    with pytest.raises(ValueError, match="STORAGE_URL"):
        create_storage(url)


def test_create_storage_refuses_bad_bucket_and_prefix() -> None:
    with pytest.raises(ValueError, match=r"STORAGE_URL.*bucket"):
        create_storage("s3://Not_A_Bucket")
    with pytest.raises(ValueError, match="STORAGE_URL has an invalid prefix"):
        create_storage("s3://aisha-files/../etc")


def test_create_storage_never_echoes_credentials_in_the_url() -> None:
    with pytest.raises(ValueError, match="STORAGE_URL") as error:
        create_storage("s3://AKIAEXAMPLE:wJalrXUtnFEMI@aisha-files")

    assert "wJalrXUtnFEMI" not in str(error.value)
    assert "S3_SECRET_KEY" in str(error.value)
