"""Folders written whole or not at all, and checked before they are read: temp beside the target, then a rename.

Why: a save that deleted ``specdef.json``, wrote ``model.safetensors`` and wrote the metadata again left, when it
was killed half-way, a folder that loaded as a plain model with freshly random layers. Here every output folder is
built in a temporary sibling ``.<name>.tmp-<pid>-<n>`` on the same file system and only then swapped into place
(Linux: one ``renameat2(RENAME_EXCHANGE)``, so the target name always holds a complete folder; elsewhere two
renames, with the old copy kept as ``.<name>.old-<pid>-<n>`` until the new one is in place). A kill at any
moment leaves either the previous output or the new one, plus at most a temporary sibling that the next write
removes (and, without the exchange, a kill between the two renames leaves the old copy that ``recover`` — called
by the next write and by ``llm.load`` — renames back). Files of the old folder that a save does not write (notes, a README) are carried over; stale model
files are not.

Reading is checked the same way: ``safetensors_header`` compares the file size with what its header promises (a
truncated file is named as such, not a Rust deserialisation error), and ``read_metadata`` refuses a
``specdef.json`` that is not JSON. ``SPECDEF_LITE_FAULT=<point>`` kills the writing process at a named point (the
fault tests use it to make a kill deterministic).

Writers that read before they write (one table several processes add to) or start expensive one-time work (a
model conversion) take ``exclusive(path)``, an advisory ``flock`` on ``path.lock``: one process at a time.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import itertools
import json
import math
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["safetensors_header", "read_json", "atomic_folder", "atomic_file", "exclusive", "strict_json", "fault_point",
           "check_locked_folder", "recover", "MODEL_FILES"]

_counter = itertools.count()
#: name prefixes/suffixes of the files a model save writes; an old folder's copies are replaced, not carried over
MODEL_FILES = ("config.json", "generation_config.json", "specdef.json", "model.safetensors", "model-",
               "pytorch_model", "tokenizer", "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
               "chat_template", "spiece.model", "sentencepiece")


def fault_point(name: str) -> None:
    """Die here with SIGKILL when ``SPECDEF_LITE_FAULT`` names this point (fault tests; a no-op otherwise)."""
    if os.environ.get("SPECDEF_LITE_FAULT") == name:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def safetensors_header(file: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file, after checking that the file holds every byte it promises.

    Raises ValueError naming the file when it is truncated, padded or not a safetensors file at all.
    """
    file = Path(file)
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise ValueError(f"{file} is truncated or not a safetensors file ({size} bytes): re-save or restore it")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{file} has a corrupt header ({e.__class__.__name__}): re-save or restore it") from None
    if not isinstance(header, dict):
        raise ValueError(f"{file} has a corrupt header: re-save or restore it")
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    promised = 8 + n + (max(ends) if ends else 0)
    if promised != size:
        what = "truncated" if size < promised else "longer than its header says"
        raise ValueError(f"{file} is {what}: {size:,} bytes on disk, its header promises {promised:,} "
                         f"(an interrupted write or copy?): re-save or restore it")
    return header


def read_json(file: str | os.PathLike) -> dict | None:
    """The object in a JSON file, None if the file does not exist; ValueError if it is not a JSON object."""
    file = Path(file)
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}): the folder is damaged; re-save it") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} does not hold a JSON object: the folder is damaged; re-save it")
    return data


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{next(_counter)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(target: Path) -> list[tuple[str, Path]]:
    """(kind, path) of the temp/old siblings of ``target`` whose writer was killed (its process is gone)."""
    out = []
    for p in target.parent.glob(f".{glob.escape(target.name)}.*-*-*"):
        kind_pid = p.name[len(target.name) + 2:].split("-")
        if len(kind_pid) == 3 and kind_pid[0] in ("tmp", "old") and kind_pid[1].isdigit() and not _alive(int(kind_pid[1])):
            out.append((kind_pid[0], p))
    return out


def recover(target: str | os.PathLike) -> bool:
    """Put back the previous output of a save killed between its two renames (only where the atomic exchange is
    unavailable): ``target`` is missing and ``.<name>.old-<pid>-<n>`` of a dead writer holds it. True if done."""
    target = Path(target).expanduser()
    if target.exists() or not target.parent.is_dir():
        return False
    olds = sorted((p for kind, p in _leftovers(target) if kind == "old"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return False
    os.rename(olds[-1], target)
    return True


def _remove_leftovers(target: Path) -> None:
    """Delete temp/old siblings of ``target`` left by writers that were killed (after ``recover``)."""
    recover(target)
    for _, p in _leftovers(target):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _carry_over(old: Path, new: Path) -> None:
    """Copy (hard-link where possible) what ``old`` holds that is neither in ``new`` nor a model file."""
    for item in old.iterdir():
        if (new / item.name).exists() or item.name.startswith(MODEL_FILES) or item.name.startswith("."):
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.copytree(item, new / item.name, symlinks=True)
        else:
            try:
                os.link(item, new / item.name, follow_symlinks=False)
            except OSError:
                shutil.copy2(item, new / item.name, follow_symlinks=False)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_folder(out) as tmp:`` write everything into ``tmp``; on success it replaces ``out`` whole.

    On an exception the temporary folder is removed and ``out`` is left as it was. ``out`` must be a folder or
    not exist; its parent folders are created.
    """
    target = Path(target).expanduser()
    if target.is_symlink():
        target = target.resolve()  # replace the folder the link points to, and keep the link
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is a file, not a folder: choose another output folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    tmp = _sibling(target, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        fault_point("save:before-swap")
        if target.is_dir():
            _carry_over(target, tmp)
            if _exchange(tmp, target):
                shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
                return
            old = _sibling(target, "old")
            os.rename(target, old)
            fault_point("save:between-renames")
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def strict_json(obj):
    """A copy that strict JSON can hold: NaN and ±inf (a diverged run's loss) become None (null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def atomic_file(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``target`` through a temporary sibling and ``os.replace``: all of it or nothing."""
    target = Path(target).expanduser()
    if target.is_dir():
        raise ValueError(f"{target} is a folder, not a file")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


@contextlib.contextmanager
def exclusive(target: str | os.PathLike) -> Iterator[None]:
    """``with exclusive(out):`` one process at a time for ``out`` (an advisory ``flock`` on ``out.lock``).

    For writers that read before they write (a table several processes add to) and for expensive one-time
    work (a model conversion two notebooks may start at once): the second process waits, then sees the
    first one's result. Where ``fcntl`` is missing (Windows) it does not lock.
    """
    lock = Path(target).expanduser()
    lock = lock.with_name(lock.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def check_locked_folder(folder: Path, meta: dict | None, weights_file: str) -> dict | None:
    """The folder's ``specdef.json`` after checking that it and the weights come from the same save.

    Refuses (ValueError): weights that hold deformed pairs (``*.W_tilde``) with no metadata naming them, metadata
    naming pairs the weights do not hold (or with other shapes), and a save id that differs between the two.
    """
    files = sorted(folder.glob("*.safetensors"))
    headers = {f.name: safetensors_header(f) for f in files}
    keys = {k: v for h in headers.values() for k, v in h.items() if k != "__metadata__"}
    pairs = sorted(k[: -len(".W_tilde")] for k in keys if k.endswith(".W_tilde"))
    deformed = (meta or {}).get("deformed") or {}
    if meta is not None and not isinstance(deformed, dict):
        raise ValueError(f"{folder}/specdef.json is damaged (its 'deformed' entry is not a mapping): re-save it")
    if pairs and not deformed:
        raise ValueError(f"{folder} holds {len(pairs)} deformed pairs (e.g. {pairs[0]}.W_tilde) but "
                         f"{'no specdef.json' if meta is None else 'a specdef.json that lists none'}: weights and "
                         f"metadata come from different saves (an interrupted save?); re-save the folder")
    for name, info in deformed.items():
        if not isinstance(info, dict) or not {"alpha", "k"} <= set(info):
            raise ValueError(f"{folder}/specdef.json is damaged (entry {name!r} lacks alpha/k): re-save it")
        wt, c = keys.get(f"{name}.W_tilde"), keys.get(f"{name}.C")
        if wt is None or c is None:
            raise ValueError(f"{folder}/specdef.json lists the deformed layer {name!r} but {weights_file} holds no "
                             f"{name}.W_tilde / {name}.C: weights and metadata come from different saves; re-save it")
        out, inp = info.get("out", wt["shape"][0]), info.get("in", wt["shape"][1])
        if list(wt["shape"]) != [out, inp] or list(c["shape"]) != [out, out]:
            raise ValueError(f"{folder}: {name} has W̃ {wt['shape']} and C {c['shape']} in {weights_file} but "
                             f"specdef.json says {out}×{inp}: weights and metadata come from different saves")
    ids = {(h.get("__metadata__") or {}).get("specdef_lite_save_id") for h in headers.values()} - {None}
    want = (meta or {}).get("save_id")
    if want and ids and ids != {want}:
        raise ValueError(f"{folder}: specdef.json (save {want[:8]}) and {weights_file} (save "
                         f"{sorted(ids)[0][:8]}) come from different saves; re-save the folder")
    return meta
