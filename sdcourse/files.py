"""Writing files safely: the rule every command of the course follows when it writes.

- Each file is written atomically: to a temporary name beside it, then renamed over it
  (`write_atomically`, `write_text`, `write_json`, `save_safetensors`; `save_into` for a library's
  save that writes several files). An interrupt leaves the old file or the whole new one, never
  half of one.
- An output folder is claimed before anything is written (`claim_folder`): a missing or empty
  folder, or one holding only files this command writes, is fine; a folder holding anyone
  else's files is refused, naming one of them, unless the learner asks for `overwrite`.
- Nothing is written into the model that is read from (`refuse_overlap`).
- A piece of work made of several files (a build stage) is finished only when its marker, written
  after its last file, says so (`write_marker`, `read_marker`); the marker lists the files, and
  `files_problem` checks that each one is there, whole, and loads.

    write_json("runs/x/log.json", {"steps": 10})
    out = claim_folder("runs/my-lora", "--out", owned=["lora_ckpt.pt"], overwrite=False)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"  # write_atomically's temporary files: ".<name>.<process id>.tmp"


def write_atomically(path, write) -> Path:
    """Call `write(temporary_path)` to write the file, then rename it to `path` (the rename is
    atomic). The temporary file is removed if `write` fails. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_text(path, text: str) -> Path:
    return write_atomically(path, lambda temporary: Path(temporary).write_text(text))


def write_json(path, data) -> Path:
    return write_text(path, json.dumps(data, indent=2))


def save_safetensors(path, tensors: dict, metadata: dict | None = None) -> Path:
    """A dict of tensors as a .safetensors file (contiguous copies where needed), atomically."""
    from safetensors.torch import save_file

    tensors = {name: value.contiguous() for name, value in tensors.items()}
    return write_atomically(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def read_json(path, what: str = "file"):
    """The JSON in `path`; a file that does not parse is named in the error."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"the {what} {path} cannot be read ({type(error).__name__}: {error}); "
                         f"delete it or put back a good copy") from None


def save_into(folder, save):
    """Call `save(temporary_folder)` (a library's save that writes several files in place), then
    move each file it wrote into `folder`, at the same place, by an atomic rename: an interrupt
    leaves each file old or whole."""
    folder = Path(folder)
    temporary = folder / f".saving.{os.getpid()}{TEMPORARY_SUFFIX}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        save(temporary)
        for path in sorted(p for p in temporary.rglob("*") if p.is_file()):
            target = folder / path.relative_to(temporary)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _is_temporary(relative: Path) -> bool:
    return any(part.startswith(".") and part.endswith(TEMPORARY_SUFFIX) for part in relative.parts)


def claim_folder(folder, argument: str, owned=(), overwrite: bool = False) -> Path:
    """Check that a command may write into `folder` (given as the command's `argument`, e.g.
    "--out"): it is missing, empty, or holds only the files named in `owned` (paths relative to
    it, written by this command before) and leftovers of interrupted writes. Otherwise it is
    refused, naming one of the other files, unless `overwrite` (the learner's explicit choice)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{argument} {folder} is a file; give a folder (a new or empty one)")
    if overwrite or not folder.exists():
        return folder
    owned = {Path(name) for name in owned}
    others = sorted(path for path in folder.rglob("*") if path.is_file()
                    and path.relative_to(folder) not in owned and not _is_temporary(path.relative_to(folder)))
    if others:
        raise FileExistsError(
            f"{argument} {folder} holds files this command did not write, such as {others[0]} "
            f"({len(others)} in all); give a new or empty folder, or add --overwrite to write over them")
    return folder


def _same_or_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def refuse_overlap(written, read, written_argument: str, read_argument: str):
    """Refuse to write into the model that is read from: `written` (a folder this command writes)
    must be neither `read` nor inside it, nor hold it."""
    a, b = Path(written).resolve(), Path(read).resolve()
    if _same_or_inside(a, b) or _same_or_inside(b, a):
        raise ValueError(f"{written_argument} {written} and {read_argument} {read} are the same folder, or one holds "
                         f"the other: a command never writes into the model it reads from; give another "
                         f"{written_argument}")


def file_problem(path) -> str | None:
    """Why the file at `path` does not load (None when it does), by its kind: a .safetensors file's
    header and length, a JSON file, a .npz archive's index, a torch checkpoint (.pt)."""
    path = Path(path)
    if not path.is_file():
        return f"{path} is missing"
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as opened:
                opened.keys()
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as archive:
                archive.files
        elif path.suffix == ".pt":
            import torch

            torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # each library raises its own kind for a damaged file
        return f"{path} is damaged ({type(error).__name__}: {error})"
    return None


def files_problem(root, files) -> str | None:
    """The first of `files` (paths relative to `root`) that is missing or does not load, as a
    sentence; None when every one loads. `files` may map each name to its size in bytes."""
    root = Path(root)
    for name in files:
        problem = file_problem(root / name)
        if problem is None and isinstance(files, dict) and (root / name).stat().st_size != files[name]:
            problem = f"{root / name} has {(root / name).stat().st_size} bytes, not the {files[name]} written"
        if problem is not None:
            return problem
    return None


def write_marker(marker, root, files, settings: dict | None = None) -> Path:
    """Mark a piece of work finished, after its last file is written: the marker (a JSON file)
    lists `files` (relative to `root`) with their sizes, and the `settings` they were made with."""
    root = Path(root)
    return write_json(marker, {"files": {str(name): (root / name).stat().st_size for name in files},
                               "settings": settings or {}})


def read_marker(marker) -> dict | None:
    """What a marker records ({"files": {name: size}, "settings": {...}}), or None when there is no
    marker (or only a damaged one: the work it would mark is then not taken as finished)."""
    try:
        recorded = json.loads(Path(marker).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("files"), dict):
        return None
    return recorded


def folder_fingerprint(folder, suffixes=(".safetensors", ".bin", ".json")) -> str:
    """SHA-256 over the names and bytes of the files in `folder` whose names end in `suffixes`
    (a model's weights and configs): the same for the same model wherever it lies, different as
    soon as one weight changes. About 0.1 s for the 30 MB embedded model."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(tuple(suffixes))):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as opened:
            for block in iter(lambda: opened.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
