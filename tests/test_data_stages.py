"""`download` and `prepare` through the real code: a loopback HTTP server, real archives, real image files."""

import codecs
import hashlib
import io
import json
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke
from http_server import FileServer, closed_port_url
from PIL import Image

from ddpm.cifar10 import cifar10_training_images
from ddpm.config import DataConfig
from ddpm.data import holdout_indices, load_images, prepare, synthetic_flowers
from ddpm.download import ARCHIVES, download, extract_tar_safely
from ddpm.errors import UserError
from ddpm.files import sha256_hex

DDPM = str(Path(sys.executable).parent / "ddpm")
FLOWERS102_ARCHIVE = ARCHIVES["flowers102"].name


def jpeg_bytes(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def flowers_archive(count: int = 12) -> bytes:
    """A .tgz in the Flowers-102 layout: jpg/image_00001.jpg, ... (non-square, like the real ones)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for i, array in enumerate(synthetic_flowers(count, 48, seed=7), start=1):
            data = jpeg_bytes(Image.fromarray(array.transpose(1, 2, 0)).resize((60, 45)))
            info = tarfile.TarInfo(f"jpg/image_{i:05d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archive() -> bytes:
    return flowers_archive()


@pytest.fixture
def server(archive: bytes) -> FileServer:
    server = FileServer({"/flowers/" + FLOWERS102_ARCHIVE: archive})
    yield server
    server.httpd.shutdown()


def flowers_config(server: FileServer, archive: bytes, **values: object) -> DataConfig:
    checksum = "md5:" + hashlib.md5(archive).hexdigest()
    return DataConfig(source="flowers102", url=server.url, checksum=checksum, image_size=16, **values)


def test_download_verify_extract_prepare_end_to_end(server: FileServer, archive: bytes, tmp_path: Path) -> None:
    cfg = flowers_config(server, archive, holdout=0)
    folder = download(cfg, tmp_path / "raw", progress=False)
    assert sorted(p.name for p in (folder / "jpg").iterdir())[:2] == ["image_00001.jpg", "image_00002.jpg"]
    assert (tmp_path / "raw" / FLOWERS102_ARCHIVE).read_bytes() == archive
    manifest = prepare(cfg, tmp_path / "raw", tmp_path / "prepared", workers=2, progress=False)
    images = np.load(tmp_path / "prepared" / "images.npy")
    assert images.shape == (12, 3, 16, 16) and images.dtype == np.uint8
    assert manifest["count"] == 12 and manifest["skipped"] == [] and manifest["source"] == "flowers102"
    assert manifest["sha256"] == hashlib.sha256(images.tobytes()).hexdigest()
    assert json.loads((tmp_path / "prepared" / "manifest.json").read_text()) == manifest

    requests = len(server.requests)
    assert download(cfg, tmp_path / "raw", progress=False) == folder  # everything present: nothing to do
    assert len(server.requests) == requests


def test_a_dropped_connection_is_resumed_not_restarted(server: FileServer, archive: bytes, tmp_path: Path) -> None:
    half = len(archive) // 2
    server.drop_after = half
    download(flowers_config(server, archive), tmp_path, progress=False)
    assert server.requests == [("/flowers/102flowers.tgz", None), ("/flowers/102flowers.tgz", f"bytes={half}-")]
    assert server.bytes_sent == len(archive)  # not one byte sent twice
    assert (tmp_path / FLOWERS102_ARCHIVE).read_bytes() == archive


def test_an_interrupted_download_resumes_in_the_next_run(server: FileServer, archive: bytes, tmp_path: Path) -> None:
    (tmp_path / (FLOWERS102_ARCHIVE + ".part")).write_bytes(archive[:1000])
    download(flowers_config(server, archive), tmp_path, progress=False)
    assert server.requests == [("/flowers/102flowers.tgz", "bytes=1000-")]
    assert server.bytes_sent == len(archive) - 1000
    assert not (tmp_path / (FLOWERS102_ARCHIVE + ".part")).exists()


def test_a_wrong_checksum_fails_cleanly_and_leaves_nothing(server: FileServer, archive: bytes, tmp_path: Path) -> None:
    cfg = flowers_config(server, archive).model_copy(update={"checksum": "md5:" + "0" * 32})
    with pytest.raises(UserError, match=r"checksum mismatch, expected md5:0{32}, got md5:[0-9a-f]{32}; deleted"):
        download(cfg, tmp_path / "raw", progress=False)
    assert list((tmp_path / "raw").iterdir()) == []


def test_offline_or_missing_files_are_one_clear_error(server: FileServer, archive: bytes, tmp_path: Path) -> None:
    closed = closed_port_url()
    with pytest.raises(UserError, match=rf"cannot download {closed}102flowers.tgz .*data.source: folder .*synthetic"):
        download(flowers_config(server, archive).model_copy(update={"url": closed}), tmp_path, progress=False)
    with pytest.raises(UserError, match="nope/102flowers.tgz: HTTP 404"):
        download(
            flowers_config(server, archive).model_copy(update={"url": server.url + "nope"}), tmp_path, progress=False
        )
    assert list(tmp_path.iterdir()) == []


def evil_archive(kind: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        ok = tarfile.TarInfo("jpg/fine.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        member = tarfile.TarInfo({"dotdot": "../evil.txt", "absolute": "/tmp/evil.txt"}.get(kind, "jpg/x"))
        if kind == "symlink":
            member.type, member.linkname = tarfile.SYMTYPE, "../../outside.txt"
        elif kind == "symlink inside":  # harmless alone, but a chain of such links can lead out
            member.type, member.linkname = tarfile.SYMTYPE, "fine.txt"
        elif kind == "hardlink":
            member.type, member.linkname = tarfile.LNKTYPE, "../outside.txt"
        elif kind == "device":
            member.type = tarfile.CHRTYPE
        elif kind == "unknown type":  # tarfile would write it as a file
            member.type = b"Z"
        else:
            member.size = 4
        tar.addfile(member, io.BytesIO(b"evil") if member.isfile() else None)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("dotdot", "path with '..'"),
        ("absolute", "absolute path"),
        ("symlink", r"a link \(to '../../outside.txt'\), and the archives ddpm downloads hold none"),
        ("symlink inside", r"a link \(to 'fine.txt'\)"),
        ("hardlink", r"a link \(to '../outside.txt'\)"),
        ("device", "device file"),
        ("unknown type", "neither a file nor a folder"),
    ],
)
def test_unsafe_archive_members_are_refused_and_nothing_is_written(tmp_path: Path, kind: str, reason: str) -> None:
    (tmp_path / "raw").mkdir()
    archive = tmp_path / "raw" / "evil.tar"
    archive.write_bytes(evil_archive(kind))
    with pytest.raises(UserError, match=f"refusing to extract .*{reason}.*nothing was extracted"):
        extract_tar_safely(archive, tmp_path / "raw" / "out")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.tar", "raw"]


def test_a_link_past_the_member_checks_is_found_after_extraction_before_anything_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ddpm.download

    monkeypatch.setattr(ddpm.download, "_unsafe_member", lambda member: None)  # as if a check had a hole
    archive = tmp_path / "evil.tar"
    archive.write_bytes(evil_archive("symlink inside"))
    with pytest.raises(UserError, match=r"evil.tar: extracting it made a link, jpg/x; nothing was extracted$"):
        extract_tar_safely(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar"]


def chained_links_archive(outside: str) -> bytes:
    """A CIFAR-10 archive whose batch folder is a chain of links out of the extraction folder, each
    link added before the ones it goes through exist, so that a check of each link as it is
    extracted finds it inside: up3 → up2/.., up2 → up1/.., up1 → s/.., s → . make up3 the folder
    three above the extraction folder."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, target in (("cifar-10-batches-py", f"up3/{outside}"), ("up3", "up2/.."), ("up2", "up1/.."),
                             ("up1", "s/.."), ("s", ".")):  # fmt: skip
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
    return buffer.getvalue()


def test_links_that_chain_out_of_the_archive_are_refused_and_nothing_is_read_through_them(tmp_path: Path) -> None:
    batches = {f"data_batch_{i}": cifar10_batch(synthetic_flowers(1, 32, seed=i), [0]) for i in range(1, 6)}
    for name, data in batches.items():  # outside the extraction folder tmp/data/raw/cifar10, three up
        (tmp_path / "elsewhere" / "batches" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "elsewhere" / "batches" / name).write_bytes(data)
    archive = chained_links_archive("elsewhere/batches")
    server = FileServer({"/kriz/cifar-10-python.tar.gz": archive})
    checksum = f"data.checksum=md5:{hashlib.md5(archive).hexdigest()}"
    refused = invoke("download", "--source", "cifar10", "--set", f"data.url={server.root}/kriz/", "--set", checksum,
                     cwd=tmp_path)  # fmt: skip
    assert refused.exit_code == 2, refused.output
    assert refused.stderr.strip().splitlines()[-1] == (  # after the progress bar
        f"ddpm: error: {Path('data/raw/cifar-10-python.tar.gz')}: refusing to extract 'cifar-10-batches-py': a link "
        "(to 'up3/elsewhere/batches'), and the archives ddpm downloads hold none; nothing was extracted"
    )
    assert sorted(p.name for p in (tmp_path / "data" / "raw").iterdir()) == ["cifar-10-python.tar.gz"]
    nothing = invoke("prepare", "--source", "cifar10", "--image-size", "32", cwd=tmp_path)
    assert nothing.exit_code == 2 and "data_batch_1: not found; run `ddpm download --source cifar10`" in nothing.stderr


def test_a_link_left_in_an_extracted_folder_is_never_read_and_a_new_download_replaces_it(tmp_path: Path) -> None:
    images = synthetic_flowers(5, 32, seed=3)
    batches = {f"data_batch_{i + 1}": cifar10_batch(images[i : i + 1], [i]) for i in range(5)}
    archive = cifar10_archive(batches)
    server = FileServer({"/kriz/cifar-10-python.tar.gz": archive})
    download = ["download", "--source", "cifar10", "--set", f"data.url={server.root}/kriz/", "--set",
                f"data.checksum=md5:{hashlib.md5(archive).hexdigest()}"]  # fmt: skip
    assert invoke(*download, cwd=tmp_path).exit_code == 0
    batch = tmp_path / "data/raw/cifar10/cifar-10-batches-py/data_batch_1"
    (tmp_path / "secret").write_bytes(batches["data_batch_2"])
    batch.unlink()
    batch.symlink_to(tmp_path / "secret")  # as an earlier ddpm, which let link chains through, may have left it
    refused = invoke("prepare", "--source", "cifar10", "--image-size", "32", "--set", "data.holdout=0", cwd=tmp_path)
    assert refused.exit_code == 2, refused.output
    assert refused.stderr.strip() == (
        f"ddpm: error: {Path('data/raw/cifar10/cifar-10-batches-py/data_batch_1')}: a link (to '{tmp_path}/secret') "
        "in what `ddpm download` extracted, whose archives hold none; refused without reading it: run `ddpm "
        "download --source cifar10` again"
    )
    assert not (tmp_path / "data" / "prepared").exists()
    assert invoke(*download, cwd=tmp_path).exit_code == 0  # extracts the archive again, in place of the folder
    assert not batch.is_symlink() and batch.read_bytes() == batches["data_batch_1"]


def make_folder(root: Path) -> None:
    """Good images in five modes and three bad files, in nested folders."""
    flower = Image.fromarray(synthetic_flowers(1, 40)[0].transpose(1, 2, 0))
    (root / "a").mkdir(parents=True)
    (root / "b" / "c").mkdir(parents=True)
    (root / "a" / "rgb.jpg").write_bytes(jpeg_bytes(flower))
    (root / "a" / "cmyk.jpg").write_bytes(jpeg_bytes(flower.convert("CMYK")))
    flower.convert("L").save(root / "b" / "gray.png")
    transparent = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # red, but fully transparent
    transparent.save(root / "b" / "rgba.png")
    flower.convert("P").save(root / "b" / "c" / "palette.gif")
    png = io.BytesIO()
    flower.save(png, format="PNG")
    (root / "b" / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    good = jpeg_bytes(flower)
    (root / "corrupt.jpg").write_bytes(good[:200] + bytes(range(256)) * 4)
    (root / "text.jpg").write_text("this is not a picture\n")
    (root / "notes.txt").write_text("ignored: not an image suffix\n")


def test_prepare_a_folder_keeps_the_good_and_lists_the_bad(tmp_path: Path) -> None:
    make_folder(tmp_path / "images")
    cfg = DataConfig(source="folder", folder=str(tmp_path / "images"), image_size=32, holdout=0)
    manifest = prepare(cfg, tmp_path / "unused", tmp_path / "out", workers=2, progress=False)
    images = np.load(tmp_path / "out" / "images.npy")
    assert images.shape == (5, 3, 32, 32) and images.dtype == np.uint8
    skipped = {entry["file"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(skipped) == {"b/truncated.png", "corrupt.jpg", "text.jpg"}
    assert skipped["text.jpg"] == "not an image"
    assert skipped["b/truncated.png"].startswith("unreadable")
    # sorted order: a/cmyk.jpg, a/rgb.jpg, b/c/palette.gif, b/gray.png, b/rgba.png
    gray, rgba = images[3], images[4]
    assert np.array_equal(gray[0], gray[1]) and np.array_equal(gray[1], gray[2])
    assert (rgba == 255).all()  # transparent pixels become white, not the red they hide
    assert np.abs(images[0].astype(int) - images[1].astype(int)).mean() < 20  # CMYK comes out as the RGB image


def test_prepare_keeps_the_aspect_ratio(tmp_path: Path) -> None:
    wide = np.zeros((30, 90, 3), np.uint8)
    wide[:, :30, 0] = wide[:, 60:, 2] = 255  # red | green | blue thirds
    wide[:, 30:60, 1] = 255
    (tmp_path / "images").mkdir()
    Image.fromarray(wide).save(tmp_path / "images" / "wide.png")
    cfg = DataConfig(source="folder", folder=str(tmp_path / "images"), image_size=16, holdout=0)
    prepare(cfg, tmp_path, tmp_path / "out", workers=1, progress=False)
    image = np.load(tmp_path / "out" / "images.npy")[0]
    # the centre third, not squashed (Lanczos lets a little of the neighbours into the edge columns)
    assert (image[1] > 230).all() and (image[[0, 2]] < 30).all()


def test_prepare_twice_gives_byte_identical_output(tmp_path: Path) -> None:
    make_folder(tmp_path / "images")
    cfg = DataConfig(source="folder", folder=str(tmp_path / "images"), image_size=16, holdout=2)
    for out in ("one", "two"):
        prepare(cfg, tmp_path, tmp_path / out, workers=2, progress=False)
    for name in ("images.npy", "holdout.npy", "manifest.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_prepare_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="empty: no image files"):
        prepare(DataConfig(source="folder", folder=str(tmp_path / "empty")), tmp_path, tmp_path / "out", progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_text("x")
    with pytest.raises(UserError, match="bad: none of the 1 image files could be read .first: x.jpg: not an image"):
        prepare(DataConfig(source="folder", folder=str(tmp_path / "bad")), tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(UserError, match="raw/flowers102: no such folder; run `ddpm download` first"):
        prepare(DataConfig(), tmp_path / "raw", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def cifar10_batch(images: np.ndarray, labels: list[int]) -> bytes:
    """A batch in CIFAR-10's python format: a pickled dict of bytes keys, rows of R, G, B planes."""
    batch = {b"batch_label": b"training batch", b"labels": labels, b"data": images.reshape(len(images), -1),
             b"filenames": [b"x.png"] * len(images)}  # fmt: skip
    return pickle.dumps(batch, protocol=2)


def cifar10_archive(batches: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Exploit:
    def __reduce__(self) -> tuple:
        return (exec, ("open('pwned', 'w').write('ran')",))


def test_cifar10_is_downloaded_checked_and_prepared_as_published(tmp_path: Path) -> None:
    images = synthetic_flowers(15, 32, seed=3)
    batches = {f"data_batch_{i + 1}": cifar10_batch(images[3 * i : 3 * i + 3], [i] * 3) for i in range(5)}
    batches["test_batch"] = cifar10_batch(synthetic_flowers(2, 32, seed=4), [0, 1])  # never a training image
    archive = cifar10_archive(batches)
    server = FileServer({"/kriz/cifar-10-python.tar.gz": archive})
    source = ["--source", "cifar10", "--set", f"data.url={server.root}/kriz/"]
    checksum = "md5:" + hashlib.md5(archive).hexdigest()
    wrong = invoke("download", *source, cwd=tmp_path)  # the official md5 is not the test archive's
    assert wrong.exit_code == 2 and "checksum mismatch, expected md5:c58f30108f718f92721af3b95e74349a" in wrong.output
    done = invoke("download", *source, "--set", f"data.checksum={checksum}", cwd=tmp_path)
    assert done.exit_code == 0, done.output
    assert (tmp_path / "data/raw/cifar10/cifar-10-batches-py/data_batch_5").is_file()
    refused = invoke("prepare", "--source", "cifar10", "--image-size", "64", cwd=tmp_path)
    assert refused.exit_code == 2 and "data.image_size: CIFAR-10's images are 32×32, got 64" in refused.output
    done = invoke("prepare", "--source", "cifar10", "--image-size", "32", "--set", "data.holdout=0", cwd=tmp_path)
    assert done.exit_code == 0, done.output
    assert np.array_equal(np.load(tmp_path / "data/prepared/images.npy"), images)  # the five batches, in order
    manifest = json.loads((tmp_path / "data/prepared/manifest.json").read_text())
    assert (manifest["source"], manifest["count"], manifest["image_size"]) == ("cifar10", 15, 32)

    # a new archive at the mirror replaces what the old one extracted
    newer = {**batches, "data_batch_1": cifar10_batch(images[:3][::-1].copy(), [0] * 3)}
    newer_archive = cifar10_archive(newer)
    mirror = FileServer({"/kriz/cifar-10-python.tar.gz": newer_archive})
    again = invoke("download", "--source", "cifar10", "--set", f"data.url={mirror.root}/kriz/", "--set",
                   f"data.checksum=md5:{hashlib.md5(newer_archive).hexdigest()}", cwd=tmp_path)  # fmt: skip
    assert again.exit_code == 0, again.output
    assert (tmp_path / "data/raw/cifar10/cifar-10-batches-py/data_batch_1").read_bytes() == newer["data_batch_1"]
    batch = tmp_path / "data/raw/cifar10/cifar-10-batches-py/data_batch_2"
    batch.write_bytes(pickle.dumps({b"data": Exploit()}, protocol=2))
    refused = invoke("prepare", "--source", "cifar10", "--image-size", "32", "--out", "again", cwd=tmp_path)
    assert refused.exit_code == 2 and "data_batch_2: not a CIFAR-10 python batch" in refused.output
    assert "exec, which is not data; refused without running it" in refused.output
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "again").exists()


RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's _reconstruct, wherever this numpy keeps it


class Reduced:
    """Pickled as a call of `function` on `args`: a batch's own choice of the calls the unpickler allows."""

    def __init__(self, function: object, *args: object) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple:
        return self.function, self.args


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            Reduced(codecs.encode, "abc", "no-such-codec"),  # was LookupError
            "it encodes text as 'no-such-codec', where a pickle of bytes uses latin1",
        ),
        (
            Reduced(RECONSTRUCT, np.ndarray, (10**13,), b"b"),  # was MemoryError, asking for 9 TiB
            "it calls numpy's _reconstruct with (10000000000000,), not as a pickle of an array does",
        ),
        (Reduced(np.ndarray, (10**13,)), "it calls numpy.ndarray, which a pickle of an array never does"),
    ],
    ids=["codec", "reconstruct", "ndarray"],
)
def test_a_cifar10_batch_that_misuses_an_allowed_call_is_one_line_naming_it(
    tmp_path: Path, data: object, reason: str
) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": data}, protocol=2))
    with pytest.raises(UserError) as error:
        cifar10_training_images(tmp_path, 32)
    assert str(error.value) == f"{folder / 'data_batch_1'}: not a CIFAR-10 python batch (UnpicklingError: {reason})"


def test_synthetic_source_is_prepared_without_downloading(tmp_path: Path) -> None:
    cfg = DataConfig(source="synthetic", synthetic_count=6, synthetic_seed=2, image_size=16, holdout=0)
    assert download(cfg, tmp_path / "raw") is None and not (tmp_path / "raw").exists()
    manifest = prepare(cfg, tmp_path / "raw", tmp_path / "out", progress=False)
    assert manifest["count"] == 6 and manifest["seed"] == 2
    assert np.array_equal(np.load(tmp_path / "out" / "images.npy"), synthetic_flowers(6, 16, seed=2))


@pytest.mark.slow
def test_download_and_prepare_commands(tmp_path: Path) -> None:
    closed = closed_port_url()
    result = subprocess.run(
        [DDPM, "download", "--set", f"data.url={closed}"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"ddpm: error: cannot download {closed}102flowers.tgz (")
    assert len(result.stderr.strip().splitlines()) == 1

    args = ["prepare", "--source", "synthetic", "--image-size", "16"]
    args += ["--set", "data.synthetic_count=5", "--set", "data.holdout=2"]
    result = subprocess.run([DDPM, *args], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("prepared 3 images of 16×16 to train on (0 skipped): data/prepared/images.npy; "
                                     "2 held out (data.holdout): data/prepared/holdout.npy")  # fmt: skip
    assert np.load(tmp_path / "data" / "prepared" / "images.npy").shape == (3, 3, 16, 16)


# --- the held-out images ---------------------------------------------------------------------------


def synthetic_split(out: Path, holdout: int, seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
    """Twenty synthetic flowers prepared into `out` with `holdout` held out: the manifest and both files' images."""
    cfg = DataConfig(source="synthetic", synthetic_count=20, image_size=16, holdout=holdout, holdout_seed=seed)
    manifest = prepare(cfg, out / "unused", out, progress=False)
    return manifest, np.load(out / "images.npy"), np.load(out / "holdout.npy")


def test_the_holdout_and_the_training_images_partition_the_prepared_ones(tmp_path: Path) -> None:
    manifest, training, held_out = synthetic_split(tmp_path, holdout=5, seed=3)
    everything = synthetic_flowers(20, 16)
    indices = manifest["holdout"]["indices"]
    assert len(indices) == 5 and indices == sorted(set(indices)) and training.shape == (15, 3, 16, 16)
    assert np.array_equal(held_out, everything[indices])  # in index order
    assert np.array_equal(training, np.delete(everything, indices, axis=0))  # the rest, in their order
    assert sorted(img.tobytes() for img in [*training, *held_out]) == sorted(img.tobytes() for img in everything)
    assert manifest["count"] == 15 and manifest["holdout"]["count"] == 5 and manifest["holdout"]["seed"] == 3
    assert manifest["npy_sha256"] == sha256_hex(tmp_path / "images.npy")
    assert manifest["holdout"]["npy_sha256"] == sha256_hex(tmp_path / "holdout.npy")
    assert manifest["sha256"] == hashlib.sha256(training.tobytes()).hexdigest()
    assert manifest["holdout"]["sha256"] == hashlib.sha256(held_out.tobytes()).hexdigest()
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest


def test_the_selection_is_the_seeded_pcg64_draw_pinned() -> None:
    for count, holdout, seed in [(20, 5, 0), (100, 30, 7), (1000, 500, 2)]:
        draws = np.random.default_rng(seed).bit_generator.random_raw(count)  # the same PCG64 stream, today
        expected = sorted(sorted(range(count), key=lambda i: (int(draws[i]), i))[:holdout])
        assert holdout_indices(count, holdout, seed).tolist() == expected
    # numpy promises PCG64's stream for a seed never changes: a change of generator or rule fails here
    assert holdout_indices(8189, 500, 0)[:8].tolist() == [2, 3, 11, 13, 20, 53, 59, 92]
    assert holdout_indices(20, 5, 0).tolist() == [2, 3, 11, 13, 15]
    assert holdout_indices(20, 0, 0).tolist() == []


def test_a_rerun_keeps_the_split_and_another_seed_replaces_both_files(tmp_path: Path) -> None:
    first, training, held_out = synthetic_split(tmp_path / "a", holdout=5)
    again, *_ = synthetic_split(tmp_path / "b", holdout=5)
    for name in ("images.npy", "holdout.npy", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other, other_training, other_held_out = synthetic_split(tmp_path / "a", holdout=5, seed=1)  # over the first
    assert other["holdout"]["indices"] != first["holdout"]["indices"]
    assert not np.array_equal(other_held_out, held_out) and not np.array_equal(other_training, training)
    assert other["holdout"]["npy_sha256"] == sha256_hex(tmp_path / "a" / "holdout.npy")
    assert other["npy_sha256"] == sha256_hex(tmp_path / "a" / "images.npy")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["holdout.npy", "images.npy", "manifest.json"]


def test_holdout_0_writes_an_empty_holdout_file(tmp_path: Path) -> None:
    manifest, training, held_out = synthetic_split(tmp_path, holdout=0)
    assert np.array_equal(training, synthetic_flowers(20, 16)) and held_out.shape == (0, 3, 16, 16)
    assert manifest["holdout"]["count"] == 0 and manifest["holdout"]["indices"] == []
    with pytest.raises(UserError, match="holdout.npy: holds no images"):  # what an evaluation of it is told
        load_images(tmp_path / "holdout.npy")


def test_a_holdout_that_leaves_fewer_than_2_training_images_is_one_line(tmp_path: Path) -> None:
    args = ["--source", "synthetic", "--image-size", "16", "--set", "data.synthetic_count=8"]
    result = invoke("prepare", *args, "--set", "data.holdout=7", cwd=tmp_path)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        "ddpm: error: data.holdout: 7 of the 8 prepared images would leave 1 to train on, fewer than 2; expected at "
        "most 6"
    ]
    assert not (tmp_path / "data").exists()
    done = invoke("prepare", *args, "--set", "data.holdout=6", cwd=tmp_path)
    assert done.exit_code == 0, done.output
    assert np.load(tmp_path / "data" / "prepared" / "images.npy").shape == (2, 3, 16, 16)
