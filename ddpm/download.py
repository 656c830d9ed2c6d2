"""Downloads: a resumable, checksum-verified HTTP fetch, safe archive extraction, and the sources
that `ddpm download` fetches (Flowers-102, CIFAR-10: ARCHIVES).

Nothing here decodes images; `ddpm.data` prepares what this module fetched.
"""

import http.client
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ddpm.config import DataConfig
from ddpm.errors import UserError
from ddpm.files import FULL_DISK, disk_full, file_digest, first_link, make_folder, write_json
from ddpm.layout import EXTRACTED, SOURCE

MAX_ATTEMPTS = 20  # requests per download while each one makes progress


# --- sources -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    """What `ddpm download` fetches for a source: the file `name` in the folder at `url`, checked
    against `checksum` (the md5 torchvision checks), extracted into `folder` of the download folder,
    where `ddpm prepare` reads it."""

    name: str
    url: str
    checksum: str
    folder: str


ARCHIVES = {
    "flowers102": Archive("102flowers.tgz", "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
                          "md5:52808999861908f626f3c1f4e79d11fa", EXTRACTED["flowers102"]),
    "cifar10": Archive("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/",
                       "md5:c58f30108f718f92721af3b95e74349a", EXTRACTED["cifar10"]),
}  # fmt: skip


def archive(cfg: DataConfig) -> Archive | None:
    """What `ddpm download` fetches for `cfg.source` (a mirror's url and checksum where data.url and
    data.checksum set them), or None for a source with nothing to fetch."""
    official = ARCHIVES.get(cfg.source)
    if official is None:
        return None
    return replace(official, url=cfg.url or official.url, checksum=cfg.checksum or official.checksum)


# --- download ------------------------------------------------------------------------------------


def stage(cfg: DataConfig, out_dir: Path) -> Path | None:
    """`ddpm download`: `download`, and source.json in `out_dir` naming the source, so that the stage's
    output holds a file for every source and DVC has something to hash and cache."""
    folder = download(cfg, out_dir)
    write_json(out_dir / SOURCE, {"source": cfg.source})
    return folder


def download(cfg: DataConfig, out_dir: Path, progress: bool = True) -> Path | None:
    """Fetch, verify and extract the source's archive into `out_dir`; return the extracted folder.
    Sources `folder` and `synthetic` have nothing to fetch (None). A second run does nothing."""
    source = archive(cfg)
    if source is None:
        return None
    path, folder = out_dir / source.name, out_dir / source.folder
    if not (path.exists() and file_digest(path, source.checksum) == source.checksum):
        hint = (
            f"offline? set data.url to a mirror's folder (and data.checksum to its archive's), or put "
            f"{source.name} in {out_dir} by hand; or, without {cfg.source}, set data.source: folder "
            "(your own images) or synthetic"
        )
        fetch(source.url.rstrip("/") + "/" + source.name, path, source.checksum, progress, hint)
        shutil.rmtree(folder, ignore_errors=True)  # a new archive: never keep what an older one extracted
    if folder.exists() and first_link(folder):  # left by an earlier ddpm, which let link chains through
        shutil.rmtree(folder)  # removes the links themselves, never what they point to
    if not folder.exists():
        extract_tar_safely(path, folder)
    return folder


def fetch(url: str, dest: Path, checksum: str, progress: bool, offline_hint: str, timeout: float = 60) -> None:
    """Stream `url` to `dest`.part, resuming with an HTTP Range request where a previous attempt
    stopped; verify the checksum, then move the file to `dest`. A mismatch deletes the file.
    Where nothing can be fetched at all, the error ends with `offline_hint`."""
    make_folder(dest.parent)
    part = dest.with_name(dest.name + ".part")
    for _ in range(MAX_ATTEMPTS):
        offset = part.stat().st_size if part.exists() else 0
        try:
            _fetch_from(url, part, offset, timeout, progress)
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:  # nothing left after `offset`: the part file is whole
                break
            raise UserError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            if isinstance(e, OSError) and e.errno in FULL_DISK:  # not the network: the part file is kept
                raise disk_full(part, None) from None
            if not getattr(e, "received", 0):  # no progress at all: offline, refused or unknown host
                reason = getattr(e, "reason", e)
                raise UserError(f"cannot download {url} ({reason}); {offline_hint}") from None
            time.sleep(0.2)  # the connection dropped mid-file: resume from what has arrived
    else:
        raise UserError(
            f"{url}: the connection kept dropping; gave up after {MAX_ATTEMPTS} attempts (run again to resume)"
        )
    actual = file_digest(part, checksum)
    if actual != checksum:
        part.unlink()
        raise UserError(f"{url}: checksum mismatch, expected {checksum}, got {actual}; deleted the download")
    os.replace(part, dest)


def _fetch_from(url: str, part: Path, offset: int, timeout: float, progress: bool) -> None:
    """One request for `url` from byte `offset` on, appended to `part`. An error raised mid-file
    carries the number of bytes received before it as `.received`."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    received = 0
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            if offset and response.status != 206:  # the server ignored the range: start over
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            with (
                open(part, "ab" if offset else "wb") as f,
                tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True, disable=not progress, desc="download"
                ) as bar,
            ):
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and offset + received < total:  # the server hung up early
                raise http.client.IncompleteRead(b"", total - offset - received)
    except Exception as e:
        e.received = received  # type: ignore[attr-defined]
        raise


def extract_tar_safely(archive: Path, target: Path) -> None:
    """Extract `archive` into `target`, all or nothing. Members with absolute paths or "..", links and
    device files are refused before anything is written.

    Links are refused, not checked: the archives ddpm downloads hold none, and a link checked as text,
    or against what exists when it is extracted, can still lead outside through links extracted after
    it (up → s/.., then s → .). So `target` holds files and folders only, and nothing outside it can be
    reached through it."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                reason = _unsafe_member(member)
                if reason:
                    raise UserError(f"{archive}: refusing to extract {member.name!r}: {reason}; nothing was extracted")
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
            try:
                # the "data" filter (Python ≥ 3.11.4) is a second guard behind the checks above
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, members=members, **extra)
                if link := first_link(tmp):  # none can be there; checked before anything reads the folder
                    made = link.relative_to(tmp)
                    raise UserError(f"{archive}: extracting it made a link, {made}; nothing was extracted")
                os.replace(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{archive}: cannot extract ({e})") from None


def _unsafe_member(member: tarfile.TarInfo) -> str | None:
    """Why `member` must not be extracted, or None."""
    if member.name.startswith("/") or PurePosixPath(member.name).is_absolute():
        return "absolute path"
    if ".." in PurePosixPath(member.name).parts:
        return "path with '..'"
    if member.isdev():
        return "device file or FIFO"
    if member.issym() or member.islnk():
        return f"a link (to {member.linkname!r}), and the archives ddpm downloads hold none"
    if not (member.isfile() or member.isdir()):
        return "neither a file nor a folder"
    return None
