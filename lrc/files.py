"""Files that are complete or absent: atomic writes, directories published with one rename, and manifests.

Rules:
- a file is written under a temporary name, fsynced and renamed (``atomic_write``); a directory of files is built
  in a temporary directory and renamed (``atomic_dir`` / ``publish_dir``); a crash leaves the old version or the
  new one, never a part, and what a killed process left behind carries its ``owner_tag`` so that a later one can
  clear it (``clear_stale_temporaries``);
- a directory is complete exactly when its manifest verifies (``write_manifest`` last, ``verify_manifest``): every
  listed file present with its size and sha256, and, for a checkpoint, nothing unlisted.

Used by training runs (``lrc.training.run_dir``), conversion, data preparation and the caches; nothing here knows about runs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lrc.errors import RunDirError

MANIFEST_NAME = "lrc_manifest.json"
"""A directory's manifest: every file's size and sha256, written last."""
MANIFEST_FORMAT = 1
_HASH_CHUNK = 8 << 20


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Write a file under a temporary name in its directory (``write(tmp_path)``), fsync it, rename it.

    A crash or an error (e.g. ENOSPC) at any moment leaves either the old file or the new one under
    ``path``, never a part; the temporary file is removed on error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; run files are shared files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: Path(p).write_text(text))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda p: Path(p).write_bytes(data))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def save_files_atomically(directory: str | os.PathLike, writer: Callable[[Path], object]) -> list[str]:
    """Let ``writer(tmp_dir)`` write files (e.g. ``save_pretrained``), then move each into ``directory``.

    Every file appears under its final name complete or not at all. Returns the names moved.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-save-", dir=d))
    try:
        writer(tmp)
        names = sorted(f.name for f in tmp.iterdir())
        for name in names:
            if (tmp / name).is_dir():
                raise RunDirError(f"{tmp / name}: a writer left a directory; only files can be moved atomically")
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(tmp / name, 0o666 & ~current_umask())
        for name in names:
            os.replace(tmp / name, d / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(d)
    return names


def publish_dir(staged: str | os.PathLike, final: str | os.PathLike, replace: bool = True) -> Path:
    """Flush a finished directory and move it to ``final`` with one rename.

    ``replace``: an existing ``final`` is replaced. Otherwise ``final`` must be absent or an empty directory at the
    moment of the rename (the kernel decides, so two writers racing for one path cannot both succeed): a
    ``final`` that another process filled meanwhile raises RunDirError and is left as it is."""
    staged, final = Path(staged), Path(final)
    fsync_tree(staged)
    if replace and final.exists():
        discard(final, staged.parent)
    try:
        os.rename(staged, final)
    except OSError as e:
        if replace or e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
        raise RunDirError(f"{final} was written by another process while this one worked; it is left as that "
                          f"process wrote it") from None
    fsync_dir(final.parent)
    return final


def owner_tag() -> str:
    """``host.pid`` of this process: part of the names of its temporary directories, so that a later process can
    tell the leftovers of a killed one (same host, pid gone) from those of a live one."""
    return f"{socket.gethostname()}.{os.getpid()}"


def _stale_owner(tag: str) -> bool:
    host, _, pid = tag.rpartition(".")
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


def clear_stale_temporaries(final: str | os.PathLike) -> list[Path]:
    """Delete what killed processes left beside ``final`` while writing or replacing it (``atomic_dir``'s
    ``.NAME.HOST.PID.*.tmp`` and ``discard``'s ``.discard-NAME.HOST.PID``): only those of this host whose process
    is gone. Returns what was deleted."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    pattern = re.compile(rf"^(?:\.{re.escape(final.name)}\.(?P<a>.+\.\d+)\.[^.]+\.tmp|"
                         rf"\.discard-{re.escape(final.name)}\.(?P<b>.+\.\d+))$")
    removed = []
    for p in final.parent.iterdir():
        m = pattern.match(p.name)
        if m and _stale_owner(m.group("a") or m.group("b")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, replace: bool = True):
    """Yield a temporary directory beside ``final``; on success it becomes ``final`` (``publish_dir``, with
    ``replace``), on error it is deleted: ``final`` is the old directory or the complete new one, never a part.
    The temporary's name carries this process's ``owner_tag`` (``clear_stale_temporaries`` removes it after a
    kill)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{owner_tag()}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp creates 0700
        publish_dir(tmp, final, replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_tree(root: str | os.PathLike) -> None:
    """Flush every file and directory under ``root`` to disk (power-loss safety before a rename)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)



# ---------------------------------------------------------------------------------------------- manifests
def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _describe_files(root: Path, rels: list[str]) -> dict[str, dict[str, Any]]:
    """{relative path: {"bytes", "sha256"}}; hashed in threads (hashlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(rels)))) as pool:
        digests = list(pool.map(lambda r: sha256_file(root / r), rels))
    return {r: {"bytes": (root / r).stat().st_size, "sha256": h} for r, h in zip(rels, digests)}


def _tree_files(root: Path) -> list[str]:
    """Every file below ``root`` (relative, sorted), the manifest excluded."""
    out = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel != MANIFEST_NAME:
                out.append(rel)
    return sorted(out)


def write_manifest(root: str | os.PathLike, step: int, files: Iterable[str] | None = None) -> Path:
    """Write ``root/lrc_manifest.json`` last: the step and every file's size and sha256.

    ``files=None``: every file below ``root`` (a checkpoint directory, which must then hold nothing
    else to verify). A list: just those files (the final files at a run's root).
    """
    root = Path(root)
    kind = "checkpoint" if files is None else "final"
    rels = _tree_files(root) if files is None else sorted(set(files))
    manifest = {"lrc_manifest": MANIFEST_FORMAT, "kind": kind, "step": int(step),
                "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": _describe_files(root, rels)}
    return write_json_atomic(root / MANIFEST_NAME, manifest)


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The parsed manifest of ``root``; a missing or malformed one raises RunDirError saying so."""
    p = Path(root) / MANIFEST_NAME
    if not p.is_file():
        raise RunDirError(f"no {MANIFEST_NAME} (incomplete, or written before manifests existed)")
    try:
        m = json.loads(p.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise RunDirError(f"{MANIFEST_NAME} is not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("lrc_manifest") != MANIFEST_FORMAT or not isinstance(m.get("files"), dict) \
            or not isinstance(m.get("step"), int):
        raise RunDirError(f"{MANIFEST_NAME} is not an lrc manifest of format {MANIFEST_FORMAT}")
    return m


def verify_manifest(root: str | os.PathLike, only: Iterable[str] | None = None, hashes: bool = True) -> str | None:
    """None if ``root`` is complete per its manifest, else the first reason it is not (one phrase). ``only``: check
    just these files, which must be listed (what a reader of ``root`` needs, e.g. the weights conversion reads).
    ``hashes=False``: presence and sizes only, no reading (decisions taken at every save, e.g. rotation)."""
    root = Path(root)
    try:
        m = read_manifest(root)
    except RunDirError as e:
        return str(e)
    files: dict[str, Any] = m["files"]
    if only is not None:
        unlisted = [r for r in only if r not in files]
        if unlisted:
            return f"{unlisted[0]} is not in its manifest"
        files = {r: files[r] for r in only}
        m = {**m, "kind": "final"}  # no check for unlisted files
    for rel, info in sorted(files.items()):
        p = root / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != info.get("bytes"):
            return f"{rel} has {p.stat().st_size} bytes, the manifest says {info.get('bytes')}"
    if m["kind"] == "checkpoint":
        extra = sorted(set(_tree_files(root)) - set(files))
        if extra:
            return f"{extra[0]} is not in the manifest (written by something else?)"
    if not hashes:
        return None
    rels = sorted(files)
    actual = _describe_files(root, rels)
    for rel in rels:
        if actual[rel]["sha256"] != files[rel].get("sha256"):
            return f"{rel} does not match its sha256 in the manifest (changed or corrupt)"
    return None


def discard(path: Path, staging: Path) -> None:
    """Remove a directory so that it disappears at once: rename it into ``staging`` (a directory on the same
    filesystem), then delete it, which can take longer."""
    staging.mkdir(parents=True, exist_ok=True)
    trash = staging / f".discard-{path.name}.{owner_tag()}"
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src``'s content at ``dst`` atomically: a hard link (no copy, no extra space), else a copy."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        atomic_write(dst, lambda p: shutil.copyfile(src, p))
        return
    os.replace(tmp, dst)
    fsync_dir(dst.parent)
