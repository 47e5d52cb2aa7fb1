"""Downloading dataset files safely: checksum-verified, atomic, with mirror fallback."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from slimlab.utils.errors import ConfigError
from slimlab.utils.logging import get_logger

log = get_logger(__name__)

_CHUNK = 1 << 20


class DownloadError(OSError):
    """A download failed: no mirror answered, or what came back had the wrong checksum."""


def md5_of(path: str | os.PathLike) -> str:
    """Return the hex MD5 of the file at `path`."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    urls: Sequence[str], dest: str | os.PathLike, md5: str, timeout: float = 60.0
) -> None:
    """Fetch the first of `urls` whose content has MD5 `md5` into `dest`, atomically.

    Each attempt streams into a temporary file beside `dest` and is renamed onto `dest` only
    once its checksum matches, so `dest` never holds a partial or unverified file.
    """
    dest = Path(dest)
    failures = []
    for url in urls:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        except OSError as exc:
            raise DownloadError(f"cannot write into {dest.parent}: {exc}") from exc
        try:
            log.info(f"Downloading {url} to {dest}")
            digest = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
                for chunk in iter(lambda r=r: r.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
            if digest.hexdigest() != md5:
                failures.append(f"{url}: MD5 {digest.hexdigest()} is not the expected {md5}")
                log.warning(f"Discarded {url}: {failures[-1]}")
                continue
            os.replace(tmp, dest)
            return
        except OSError as exc:  # URLError, HTTPError and socket timeouts are all OSErrors
            failures.append(f"{url}: {exc}")
            log.warning(f"Could not download {url}: {exc}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    raise DownloadError(f"could not fetch {dest.name} ({'; '.join(failures)})")


def ensure_file(path: Path, urls: Sequence[str], md5: str, download_missing: bool) -> Path:
    """Return `path` once it holds the file with MD5 `md5`, downloading it first when it is
    missing and `download_missing` is on; any failure is one ConfigError saying what to do."""
    if not path.is_file():
        reason = "data.download is false"
        if download_missing:
            try:
                download(urls, path, md5)
                return path
            except DownloadError as exc:
                reason = f"downloading failed: {exc}"
        raise ConfigError(
            f"{path} is missing and {reason}. Download {urls[0]} (MD5 {md5}) into "
            f"{path.parent}, or set data.data_dir to a directory that has {path.name}, or run "
            "with data.download=true on a machine with network access."
        )
    actual = md5_of(path)
    if actual != md5:
        raise ConfigError(
            f"{path} has MD5 {actual}, not the published {md5}: it is not the original file "
            "or it is damaged; delete it and run again to download it"
        )
    return path
