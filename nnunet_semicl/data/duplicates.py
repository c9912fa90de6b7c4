"""No scan enters training twice: images whose voxels equal an image already in the dataset.

``add-unlabeled`` of a folder holding copies of the annotated scans (say, ``imagesTr`` itself) would put
every annotated image, validation cases included, into training a second time under new ids. Images
are compared by a hash of their decoded voxel data and spacing (so the same scan saved with another
compression, or renamed, is still found). Only the existing images whose header (shape, voxel size)
matches one of the new images are decoded, so a large dataset costs a header read per file.

No torch or nnU-Net import (the reader is passed in).
"""
import hashlib
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def header_key(path: str) -> Optional[tuple]:
    """(shape, voxel size) from a NIfTI header without reading the voxels; None for other formats."""
    name = path.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    try:
        import nibabel as nib

        h = nib.load(path).header
        return tuple(int(s) for s in h.get_data_shape()), tuple(round(float(z), 4) for z in h.get_zooms())
    except Exception:
        return None


def content_hash(array: np.ndarray, spacing: Sequence[float]) -> str:
    """Hash of one channel's decoded voxels (as float32), its shape and its spacing (rounded to 1e-4 mm)."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    h = hashlib.sha256(repr((a.shape, tuple(round(float(s), 4) for s in spacing))).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def find_duplicates(rw, hashes: Dict[str, str], existing_files: List[str]) -> List[Tuple[str, str]]:
    """(new file, file it duplicates) pairs: a new image equal to an existing one, or to another new one.

    ``hashes``: new file -> :func:`content_hash` of its decoded channel (kept instead of the arrays: the
    input may be large); ``existing_files`` are read with ``rw`` (nnU-Net's reader of the dataset) where
    their header could match.
    """
    keys = [header_key(f) for f in hashes]
    known_keys = None if any(k is None for k in keys) else set(keys)
    out, seen = [], {}
    for f in sorted(hashes):
        if hashes[f] in seen:
            out.append((f, seen[hashes[f]]))
        else:
            seen[hashes[f]] = f
    wanted = {h: f for f, h in hashes.items()}
    for g in sorted(existing_files):
        if known_keys is not None:
            k = header_key(g)
            if k is not None and k not in known_keys:
                continue
        try:
            data, props = rw.read_images([g])
        except Exception:  # an unreadable existing file is nnU-Net's integrity check's business
            continue
        h = content_hash(data[0], props["spacing"])
        if h in wanted:
            out.append((wanted[h], g))
    return out


def image_files(folders: Sequence[str], file_ending: str) -> List[str]:
    """The image files (``*_XXXX<file_ending>``) of the given folders that exist."""
    out = []
    for d in folders:
        if os.path.isdir(d):
            out += [os.path.join(d, f) for f in sorted(os.listdir(d))
                    if f.endswith(file_ending) and not f.startswith(".")]
    return out
