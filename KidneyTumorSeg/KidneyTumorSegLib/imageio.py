"""Reading images and writing label maps (NIfTI through nibabel, NRRD through pynrrd).

An :class:`Image` holds the voxel array exactly as nibabel indexes the file (``[i, j, k]``) and
the 4 x 4 voxel-to-RAS affine (NIfTI convention, identical to Slicer's IJKToRAS).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from . import fast_gzip

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
# NRRD spaces -> sign flips that turn their world axes into RAS.
_NRRD_SPACE_TO_RAS = {
    "right-anterior-superior": np.array([1.0, 1.0, 1.0]),
    "RAS": np.array([1.0, 1.0, 1.0]),
    "left-posterior-superior": np.array([-1.0, -1.0, 1.0]),
    "LPS": np.array([-1.0, -1.0, 1.0]),
    "left-anterior-superior": np.array([-1.0, 1.0, 1.0]),
    "LAS": np.array([-1.0, 1.0, 1.0]),
}


class ImageReadError(ValueError):
    """An input file is missing, unreadable or not a 3D image; the message is one line for users."""


class OutputExistsError(FileExistsError):
    """An output exists and overwriting was not asked for."""


class OutputIsInputError(ValueError):
    """An output names an input file (or a link to it); never replaced, ``--overwrite`` or not."""


@dataclass(frozen=True)
class Image:
    """A 3D image: ``array`` indexed ``[i, j, k]`` as nibabel reads it, ``affine`` voxel -> RAS mm."""

    array: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def image_suffix(path: str | os.PathLike) -> str:
    """The format suffix of ``path`` ('.nii.gz', '.nii', '.nrrd', '.nhdr'), or '' if unknown."""
    name = Path(path).name.lower()
    for suffix in NIFTI_SUFFIXES + NRRD_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def read_image(path: str | os.PathLike, dtype: np.dtype | None = None) -> Image:
    """Read a 3D NIfTI or NRRD image.

    Integer data without intensity scaling keeps its on-disk type (a 1059-slice int16 CT stays
    555 MB); scaled or floating data is returned as float32. Pass ``dtype`` to force one.
    Raises :class:`ImageReadError` with a one-line message for anything that is not a 3D image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    suffix = image_suffix(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            image = _read_nifti(path, dtype)
        elif suffix in NRRD_SUFFIXES:
            image = _read_nrrd(path, dtype)
        else:
            raise ImageReadError(f"{path}: unsupported file type (expected .nii.gz, .nii or .nrrd)")
    except ImageReadError:
        raise
    except Exception as error:  # nibabel / gzip / pynrrd raise many kinds
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ImageReadError(f"{path}: cannot read image ({reason})") from error
    return _checked_3d(image, path)


def _read_nifti(path: Path, dtype: np.dtype | None) -> Image:
    if path.name.lower().endswith(".gz") and fast_gzip.available():
        image_class = type(nib.load(str(path)))  # NIfTI-1 or -2: nibabel reads the header only
        with fast_gzip.open_read(path) as stream:
            return _nifti_image(image_class.from_stream(stream), dtype)
    return _nifti_image(nib.load(str(path)), dtype)


def _nifti_image(img: nib.Nifti1Image, dtype: np.dtype | None) -> Image:
    """The voxels of ``img`` (read now, from its file or stream) and its affine."""
    proxy = img.dataobj
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    unscaled = slope in (1.0, None) and inter in (0.0, None)
    if dtype is not None:
        array = np.asarray(proxy, dtype=dtype)
    elif unscaled and np.issubdtype(img.get_data_dtype(), np.integer):
        array = np.asarray(proxy)
    else:
        array = np.asarray(proxy, dtype=np.float32)
    return Image(array=array, affine=np.asarray(img.affine, dtype=np.float64))


def _read_nrrd(path: Path, dtype: np.dtype | None) -> Image:
    try:
        import nrrd
    except ImportError as error:
        raise ImageReadError(f"{path}: reading NRRD needs the 'pynrrd' package (pip install pynrrd)") from error
    array, header = nrrd.read(str(path), index_order="F")
    space = header.get("space", "left-posterior-superior")
    if space not in _NRRD_SPACE_TO_RAS:
        raise ImageReadError(f"{path}: unsupported NRRD space '{space}'")
    directions = np.asarray(header.get("space directions"), dtype=np.float64)
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    if array.ndim == 4 and array.shape[3] == 1 and directions.shape == (4, 3) and np.all(np.isnan(directions[3])):
        array, directions = array[..., 0], directions[:3]  # trailing singleton axis without a direction ("none")
    if directions.shape != (3, 3):
        raise ImageReadError(f"{path}: NRRD image is not a 3D volume with space directions")
    flip = _NRRD_SPACE_TO_RAS[space]
    affine = np.eye(4)
    affine[:3, :3] = (directions * flip).T  # NRRD rows are per-axis vectors
    affine[:3, 3] = origin * flip
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return Image(array=np.ascontiguousarray(array), affine=affine)


def _checked_3d(image: Image, path: Path) -> Image:
    """``image`` with a trailing singleton 4th axis dropped; refuses anything not 3D."""
    array = image.array
    if array.ndim == 4 and array.shape[3] == 1:
        image = Image(array=array[..., 0], affine=image.affine)
        array = image.array
    if array.ndim != 3:
        raise ImageReadError(f"{path}: expected a 3D image, got {array.ndim} dimensions {tuple(array.shape)}")
    if not np.all(np.isfinite(image.affine)) or abs(np.linalg.det(image.affine[:3, :3])) < 1e-9:
        raise ImageReadError(f"{path}: the image's voxel-to-world transform is invalid")
    return image


def check_output_path(path: Path, overwrite: bool) -> None:
    """Refuse an output that exists (unless ``overwrite``) or whose folder is missing or read-only."""
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists (use --overwrite to replace it)")
    if not path.parent.is_dir():
        raise OSError(f"{path.parent}: output folder does not exist")
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"{path.parent}: output folder is not writable")


def _file_id(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` names, following links; None when it does not exist."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def refuse_input_as_output(outputs: Iterable[Path | None], inputs: Iterable[Path | None]) -> None:
    """Fail before any work when an output names an input file (the same path, or a symbolic or
    hard link to it): ``--overwrite`` never replaces an input. None entries are skipped."""
    input_ids: dict[tuple[int, int], Path] = {}
    for path in inputs:
        key = None if path is None else _file_id(path)
        if key is not None:
            input_ids.setdefault(key, Path(path))
    for output in outputs:
        given = input_ids.get(_file_id(output)) if output is not None else None
        if given is not None:
            same_name = os.path.abspath(output) == os.path.abspath(given)
            shown = str(given) if same_name else f"{given}, through a link"
            raise OutputIsInputError(f"{output}: is the input {shown}; write the output under another name "
                                     "(--overwrite never replaces an input)")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    An interrupted or failed write leaves nothing behind. Refuses an existing ``path`` unless
    ``overwrite``.
    """
    path = Path(path)
    check_output_path(path, overwrite)
    suffix = ".seg.nrrd" if path.name.lower().endswith(".seg.nrrd") else image_suffix(path) or path.suffix
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.chmod(temporary, _default_file_mode())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _default_file_mode() -> int:
    """The mode a plain ``open()`` would give a new file under the current umask (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


TRANSPOSE_BLOCK = 16  # voxels per side of the tiles fortran_order copies: small enough for the cache


def fortran_order(array: np.ndarray) -> np.ndarray:
    """``array`` ``[i, j, k]`` in Fortran (column-major) memory order, as NIfTI and NRRD store it.

    Copies in tiles of ``TRANSPOSE_BLOCK`` voxels: ``np.asfortranarray`` walks the whole volume
    with a large stride and took 0.8 s for a 234 x 512 x 512 label map here, the tiles 0.2 s.
    """
    if array.ndim != 3 or array.flags.f_contiguous:
        return np.asfortranarray(array)
    transposed = np.empty(array.shape[::-1], dtype=array.dtype)  # transposed[k, j, i] = array[i, j, k]
    block = TRANSPOSE_BLOCK
    for i in range(0, array.shape[0], block):
        for j in range(0, array.shape[1], block):
            transposed[:, j:j + block, i:i + block] = array[i:i + block, j:j + block, :].T
    return transposed.T


def write_label_map(path: str | os.PathLike, labels: np.ndarray, affine: np.ndarray, overwrite: bool = False) -> Path:
    """Write a uint8 label map ``[i, j, k]`` with ``affine`` as NIfTI or NRRD, atomically."""
    return write_image(path, np.asarray(labels, dtype=np.uint8), affine, overwrite)


def write_image(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, overwrite: bool = False) -> Path:
    """Write a 3D array ``[i, j, k]`` in its own dtype with ``affine`` as NIfTI or NRRD, atomically."""
    path = Path(path)
    suffix = image_suffix(path)
    array = fortran_order(np.asarray(array))
    with atomic_output(path, overwrite) as temporary:
        if suffix in NIFTI_SUFFIXES:
            image = nib.Nifti1Image(array, affine)
            image.header.set_xyzt_units("mm")
            image.set_qform(affine, code=1)
            image.set_sform(affine, code=1)
            _save_nifti(image, temporary)
        elif suffix in NRRD_SUFFIXES:
            _write_nrrd(temporary, array, affine)
        else:
            raise ValueError(f"{path}: unsupported output type (use .nii.gz, .nii or .nrrd)")
    return path


def _save_nifti(image: nib.Nifti1Image, path: Path) -> None:
    """``nib.save``, through igzip for a ``.gz`` name when python-isal is installed."""
    if path.name.lower().endswith(".gz") and fast_gzip.available():
        with fast_gzip.open_write(path) as stream:
            image.to_stream(stream)
    else:
        nib.save(image, str(path))


def _write_nrrd(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    import nrrd

    flip = _NRRD_SPACE_TO_RAS["left-posterior-superior"]
    header = {
        "space": "left-posterior-superior",
        "space directions": (affine[:3, :3].T * flip),
        "space origin": affine[:3, 3] * flip,
        "encoding": "gzip",
    }
    nrrd.write(str(path), array, header, index_order="F")
