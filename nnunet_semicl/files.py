"""Reading and writing files safely: atomic JSON, complete image files, stale staging folders.

* :func:`save_json` / :func:`load_json`: every JSON file the package writes (split files, plans
  variants, dataset.json, conversion and evaluation records, benchmark reports) goes through
  :func:`save_json`, which replaces the file atomically, so an interrupted command never leaves a
  half-written file; :func:`load_json` says which file is not valid JSON.
* :func:`incomplete_file_problem`: a truncated ``.nii.gz``/``.nii`` is read by SimpleITK without any
  error (the missing voxels come back as zeros), so every image we take in is checked first: gzip
  files are decompressed to the end, NIfTI files must hold the bytes their header promises.
* :func:`remove_stale_partials`: ``synthetic`` (and versions before
  :mod:`nnunet_semicl.dataset_change`) stage their output in ``.semicl_partial_<what>_<pid>`` folders; a
  process killed with SIGKILL cannot remove its own, so the next run removes those of processes that no
  longer exist.
* :func:`set_stager`: while a dataset change is open, :func:`save_json` / :func:`load_json` /
  :func:`remove_path` on the dataset's files go through its staging folder.

No torch or nnU-Net import.
"""
import gzip
import json
import os
import re
import shutil
import struct
import zlib
from typing import List, Optional

from nnunet_semicl.errors import InputError

PARTIAL_PREFIX = ".semicl_partial_"
#: written by our trainers into the fold's results folder at the end of training: whether the unsupervised terms
#: ever ran (a run whose warm-up gate never opened is LabeledOnly training under the method's name)
TRAINING_SUMMARY_FILE = "semicl_training_summary.json"
_CHUNK = 1 << 20
# set by an open nnunet_semicl.dataset_change.DatasetChange: where save_json writes a path (its staging
# folder for the dataset's files), and how remove_path removes one (when the change commits)
# (and where load_json reads a path that the change has staged: a command reads what it wrote)
_stage_path = None
_remove_path = None
_read_path = None


def set_stager(stage_path, remove, read_path) -> None:
    """While a dataset change is open, :func:`save_json`, :func:`load_json` and :func:`remove_path` go through it
    (None: directly)."""
    global _stage_path, _remove_path, _read_path
    _stage_path, _remove_path, _read_path = stage_path, remove, read_path


def remove_path(path: str) -> None:
    """Remove the file ``path``; inside an open dataset change, when that change commits."""
    if _remove_path is not None:
        _remove_path(path)
    else:
        os.remove(path)


def _numpy_to_python(o):
    """JSON for numpy scalars and arrays (benchmark and conversion records hold them)."""
    if type(o).__module__ == "numpy":
        return o.tolist() if hasattr(o, "tolist") else o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def save_json(obj, path: str) -> str:
    """Write ``obj`` to ``path`` as JSON, atomically: readers see the old file or the new one, never a part.

    The text is made first (an object JSON cannot hold raises before anything is touched), then
    written to a temporary file in the same folder (so the rename stays on one file system), flushed
    to disk and renamed over ``path``. Creates the folder; returns ``path``. Inside an open
    :class:`~nnunet_semicl.dataset_change.DatasetChange` a file of its dataset is written to the change's
    staging folder instead and reaches ``path`` when the change commits.
    """
    text = json.dumps(obj, indent=2, default=_numpy_to_python)
    if _stage_path is not None:  # a dataset change is open: its files are staged, moved in when it commits
        path = _stage_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load_json(path: str):
    """The content of the JSON file ``path``; an :class:`InputError` naming the file if it is not valid JSON."""
    if _read_path is not None:
        path = _read_path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e}). Fix or delete it.") from e


def _nifti_expected_size(header: bytes) -> Optional[int]:
    """Bytes a NIfTI-1/2 file must have (header + voxel data), or None if ``header`` is not NIfTI."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
        elif len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
        else:
            continue
        n = dims[0]
        if not 1 <= n <= 7 or bitpix <= 0 or any(d < 0 for d in dims[1:n + 1]):
            return None
        voxels = 1
        for d in dims[1:n + 1]:
            voxels *= max(int(d), 1)
        return max(int(offset), 348) + voxels * bitpix // 8
    return None


def incomplete_file_problem(path: str) -> Optional[str]:
    """Why ``path`` is not a complete image file (truncated gzip stream, NIfTI shorter than its header
    says), or None. Other formats are left to their readers."""
    name = path.lower()
    is_nifti = name.endswith(".nii") or name.endswith(".nii.gz")
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"   # by content: a misnamed plain file is read as plain
        if gzipped:
            size, header = 0, b""
            with gzip.open(path, "rb") as f:
                while True:
                    chunk = f.read(_CHUNK)
                    if not chunk:
                        break
                    if len(header) < 544:
                        header += chunk[:544 - len(header)]
                    size += len(chunk)
        elif is_nifti:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                header = f.read(544)
        else:
            return None
    except (EOFError, OSError, zlib.error) as e:
        return f"its compressed data is incomplete or damaged ({e})"
    if is_nifti:  # (a gzip stream that ends cleanly can still hold a truncated copy of the file)
        expected = _nifti_expected_size(header)
        if expected is None:
            return "it has no valid NIfTI header"
        if size < expected:
            return f"it holds {size} bytes of image data where its NIfTI header needs {expected}"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def partial_folder(root: str, what: str) -> str:
    """The staging folder of this process for ``what`` (a dataset name, ``add_unlabeled``)."""
    return os.path.join(root, f"{PARTIAL_PREFIX}{what}_{os.getpid()}")


def remove_stale_partials(root: str, what: str) -> List[str]:
    """Remove ``root``'s staging folders for ``what`` left by processes that no longer run; return them."""
    if not os.path.isdir(root):
        return []
    pattern = re.compile(re.escape(PARTIAL_PREFIX + what) + r"_(\d+)$")
    removed = []
    for d in sorted(os.listdir(root)):
        m = pattern.match(d)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)
            removed.append(os.path.join(root, d))
    return removed


def find_training_summary(*folders: Optional[str]) -> Optional[dict]:
    """The first ``TRAINING_SUMMARY_FILE`` found in ``folders`` (None entries skipped), or None."""
    for folder in folders:
        if folder and os.path.isfile(os.path.join(folder, TRAINING_SUMMARY_FILE)):
            return load_json(os.path.join(folder, TRAINING_SUMMARY_FILE))
    return None


def check_writable(folder: str, why: str) -> None:
    """Refuse a folder this process cannot write to, before a command writes anything (no rollback needed)."""
    probe = folder
    while probe and not os.path.exists(probe):   # a folder still to be created: its nearest existing parent
        parent = os.path.dirname(probe)
        probe = parent if parent != probe else ""
    if probe and not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{probe} is not writable ({why}). Give yourself write access (e.g. `chmod u+w {probe}`) "
                         f"or use a copy of the dataset you can write to, then run the command again.")
