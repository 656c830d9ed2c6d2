"""Where the MLflow store lives: the default store's URI, the files behind an SQLite URI and a file:
artifact location as MLflow's libraries read them, and the creation of a new SQLite store.

A URI is not a path: SQLAlchemy percent-decodes the path of `sqlite:///<path>` and cuts it at `?`, and
a file: URI percent-encodes `#`, `%` and letters beyond ASCII. So the default URI holds the working
folder's path as it is where SQLAlchemy reads that back unchanged, else percent-encoded; every path is
read back from a URI as those libraries read it, never by cutting off the scheme; and a folder that no
URI can name is refused before the work.
"""

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlparse
from urllib.request import url2pathname

from ddpm.config import TrackingConfig
from ddpm.errors import UserError

SQLITE = "sqlite:///"


def repository_root() -> Path:
    """Where the default store lives: DVC's root when DVC runs the stage, else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def tracking_uri(cfg: TrackingConfig) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else the SQLite database mlflow.db at the repository root."""
    if cfg.uri:
        return cfg.uri
    return os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(repository_root() / "mlflow.db")


def sqlite_uri(database: Path) -> str:
    """The SQLite URI that SQLAlchemy reads as `database`: its path as it is (`#` and any letter are
    fine), else percent-encoded (a `?`, or a `%` with two hex digits after it); a UserError where this
    SQLAlchemy reads neither as `database` (it does not decode)."""
    for uri in (SQLITE + str(database), SQLITE + quote(str(database))):
        if sqlite_database(uri) == database:
            return uri
    raise UserError(
        f"the default MLflow store {database} cannot be named by an SQLite URI (a '?' or '%' in its path, and this "
        "SQLAlchemy does not decode a URI's path); run in a folder without them, or set tracking.uri or "
        "MLFLOW_TRACKING_URI to a store elsewhere"
    )


def sqlite_database(uri: str) -> Path | None:
    """The database file of an SQLite store's `uri`, as SQLAlchemy (and SQLite, for its own file: URIs)
    reads it; None for any other store."""
    if not uri.startswith(SQLITE):
        return None
    from sqlalchemy.engine import make_url  # MLflow's own dependency

    database = make_url(uri).database or ""
    if database.startswith("file:"):  # SQLite's URI filename (sqlite:///file:/path?mode=ro&uri=true)
        database = url2pathname(urlparse(database).path)
    return Path(database)


def local_folder(location: str) -> Path | None:
    """The folder of a file: artifact location, as MLflow reads it (percent-decoded); None for a server's."""
    return Path(url2pathname(urlparse(location).path)) if location.startswith("file:") else None


@contextmanager
def store_creation(uri: str) -> Iterator[None]:
    """Serialise opening a SQLite store, so that two processes never create (migrate) the same new
    database at once; and say where a new one is. MLflow makes the folder of the URI's text, not
    decoded: that stray folder of a percent-encoded URI goes again."""
    database = sqlite_database(uri)
    if database is None:
        yield
        return
    undecoded = Path(uri.removeprefix(SQLITE)).parent
    stray = [p for p in (undecoded, *undecoded.parents) if not p.exists()]  # from the folder up
    database.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(database.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # released when this process ends, however it ends
        new = not database.exists()
        yield
        if new:
            print(f"ddpm: note: created the MLflow store {database} (artifacts beside it); `mlflow ui` there shows it, "
                  "under 'Model training'", file=sys.stderr)  # fmt: skip
    finally:
        os.close(folder)
        for made in (p for p in stray if p.is_dir() and not any(p.iterdir())):
            made.rmdir()
