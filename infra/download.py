"""Resumable, verified HTTP downloads for the publicly downloadable assets.

Used by ``scripts/fetch_assets.py``. A partial download is kept as ``<dest>.part`` and continued
with an HTTP ``Range`` request; the finished file is verified (sha256 or sha256 prefix) before it
is renamed to ``dest``. Being offline is reported at once as :class:`DownloadError`.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from tqdm import tqdm

__all__ = ["DownloadError", "download"]

CHUNK_BYTES = 1 << 20
CONNECT_TIMEOUT_S = 10.0


class DownloadError(RuntimeError):
    """A download could not be done (offline, HTTP error, checksum mismatch)."""


def _hash_file(path: Path) -> "hashlib._Hash":
    digest = hashlib.sha256()
    if path.exists():
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
                digest.update(block)
    return digest


def download(url: str, dest: str | os.PathLike, sha256: Optional[str] = None,
             timeout: float = CONNECT_TIMEOUT_S, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` if present, verifying ``sha256``.

    Args:
        url: http(s) address.
        dest: final file path; its folder is created.
        sha256: expected hex digest or a prefix of it (torchvision-style file names carry one);
            ``None`` skips verification.
        timeout: seconds to wait for the server before giving up.
        progress: show a tqdm bar.

    Returns:
        ``dest`` as a Path. Raises :class:`DownloadError` with a readable message on failure.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file is already complete
            response = None
        else:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {url} ({reason}). Are you offline? Download the file "
                            f"by hand and place it at {dest}.") from exc

    if response is not None:
        with response:
            resumed = response.status == 206
            mode = "ab" if resumed else "wb"
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, mode) as handle, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                  desc=dest.name, disable=not progress) as bar:
                for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                    handle.write(block)
                    bar.update(len(block))

    if sha256:
        digest = _hash_file(part).hexdigest()
        if not digest.startswith(sha256.lower()):
            part.unlink()
            raise DownloadError(f"{dest.name}: sha256 {digest} does not match the expected "
                                f"{sha256}; the partial file was removed, run again")
    os.replace(part, dest)
    return dest
