"""Models shipped inside the package, usable by name: ``volseg predict -m hippocampus ...``.

Each bundled model is ``volseg/models/<name>.pt`` (an inference-only checkpoint), with an
optional sample case in ``volseg/models/<name>_sample/`` and its licence/attribution there.
"""

from __future__ import annotations

from pathlib import Path

from volseg.errors import InputFileError, closest_hint

BUNDLED_DIR = Path(__file__).resolve().parent / "models"


def bundled_models() -> dict[str, Path]:
    """Name -> checkpoint path of every bundled model."""
    return {path.stem: path for path in sorted(BUNDLED_DIR.glob("*.pt"))}


#: A bundled model's int8 version (``volseg quantize``, passed its accuracy guard) is named ``NAME-int8``.
INT8_SUFFIX = "-int8"


def int8_version(path_or_name: str | Path) -> str | None:
    """The name of the bundled int8 version of the bundled model ``path_or_name`` (``brats`` ->
    ``brats-int8``), or None (a checkpoint file, or no int8 version shipped)."""
    name = str(path_or_name)
    if Path(path_or_name).is_file() or name.endswith(INT8_SUFFIX):
        return None
    int8 = f"{name}{INT8_SUFFIX}"
    return int8 if int8 in bundled_models() else None


def resolve_model(path_or_name: str | Path) -> Path:
    """A checkpoint file path, or the path of the bundled model of that name."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    models = bundled_models()
    if str(path_or_name) in models:
        return models[str(path_or_name)]
    names = ", ".join(models) or "none"
    raise InputFileError(
        f"{path_or_name}: no such checkpoint file or bundled model{closest_hint(str(path_or_name), models)}; "
        f"bundled models: {names}"
    )


def bundled_sample(name: str) -> Path:
    """The folder of a bundled model's sample case."""
    folder = BUNDLED_DIR / f"{name}_sample"
    if not folder.is_dir():
        raise InputFileError(f"the bundled model {name!r} has no sample case ({folder} is missing)")
    return folder
