"""The typed configuration: one YAML file says everything about a training run.

Sections are dataclasses; :func:`config_from_dict` checks every key and value against
them (unknown keys name the closest valid one), :func:`apply_overrides` applies
``--set section.key=value`` strings, and :func:`dump_config` writes a commented YAML
that :func:`load_config` reads back. Each field's ``help`` metadata is the comment.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from volseg.errors import ConfigError, InputFileError, closest_hint
from volseg.io.atomic import write_text
from volseg.io.segments import check_label_codes


def _field(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - "help" reads best in the schema
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: _copy(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


def _copy(value: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(value))


@dataclass
class DataConfig:
    root: str = _field("", "dataset folder (MSD, nnU-Net raw, BraTS or images/ + labels/)")
    layout: Literal["auto", "msd", "nnunet", "brats2021", "brats2023", "folder"] = _field("auto", "dataset layout")
    channels: list[str] = _field([], "input channel names, in the order the network sees them")
    labels: dict[int, str] = _field({0: "background"}, "label value -> name (0 is background)")
    regions: Union[dict[str, list[int]], None] = _field(
        None, "overlapping regions trained with sigmoid outputs, name -> label values (BraTS: WT, TC, ET)"
    )
    label_codes: dict[str, dict[str, str]] = _field({}, "label name -> {category, type}: SCHEME:VALUE:MEANING codes")
    num_folds: int = _field(5, "cross-validation folds")
    fold: int = _field(0, "fold to train (0 .. num_folds-1); -1 trains on every case")
    splits_file: Union[str, None] = _field(None, "JSON of the folds (default: splits.json in the run folder)")
    validation_cases: float = _field(
        0.1,
        "training cases set aside to validate on and choose best.pt: a fraction, a count, or 0 (none; the "
        "held-out cases are never validated on)",
    )
    cache: Literal["memory", "disk", "none"] = _field(
        "memory", "where preprocessed cases are kept between epochs (memory: a copy in every training process)"
    )
    cache_dir: Union[str, None] = _field(None, "folder of the disk cache (default: the run folder)")
    num_workers: Union[int, Literal["auto"]] = _field(
        "auto",
        "patch-making processes per training process, kept for the run (auto: its share of the cores "
        "less 1, at most 12)",
    )


@dataclass
class PreprocessingConfig:
    orientation: str = _field("RAS", "axis codes every case is reoriented to")
    spacing: Union[list[float], None] = _field(None, "target voxel spacing in mm (null keeps each case's own)")
    intensity: Literal["mri", "ct", "none"] = _field(
        "mri", "mri: z-score per case and channel over non-zero voxels; ct: clip, then z-score with dataset statistics"
    )
    clip: Union[list[float], None] = _field(None, "ct: intensity window, the dataset's foreground 0.5-99.5 percentiles")
    mean: Union[float, None] = _field(None, "ct: mean of the dataset's foreground intensities")
    std: Union[float, None] = _field(None, "ct: standard deviation of the dataset's foreground intensities")
    crop_foreground: bool = _field(True, "crop each case to its non-zero bounding box")


@dataclass
class NetworkConfig:
    name: str = _field("unet", "network from `volseg models`")
    spatial_dims: Literal[2, 3] = _field(3, "3: volumes; 2: slice by slice")
    options: dict[str, Any] = _field({}, "constructor arguments of the network (see `volseg models NAME`)")


@dataclass
class SamplingConfig:
    patch_size: list[int] = _field([96, 96, 96], "training patch size in voxels, one per spatial axis")
    batch_size: int = _field(2, "patches per training step")
    foreground_ratio: float = _field(0.33, "fraction of patches centred on a foreground voxel")
    class_balanced: bool = _field(False, "foreground patches pick each class equally often")


@dataclass
class Probability:
    prob: float = _field(0.0, "probability of applying it to a patch")


@dataclass
class FlipAugmentation(Probability):
    prob: float = _field(0.5, "probability per axis")
    axes: list[int] = _field([0, 1, 2], "spatial axes that may be flipped")


@dataclass
class Rotate90Augmentation(Probability):
    axes: list[int] = _field([0, 1], "the plane of the 90-degree rotations")


@dataclass
class AffineAugmentation(Probability):
    prob: float = _field(0.2, "probability of applying it to a patch")
    rotation_degrees: float = _field(30.0, "largest rotation about each axis")
    scale: list[float] = _field([0.7, 1.4], "zoom range")


@dataclass
class ElasticAugmentation(Probability):
    sigma: list[float] = _field([9.0, 13.0], "smoothness of the displacement field, voxels")
    magnitude: list[float] = _field([0.0, 900.0], "displacement magnitude range")


@dataclass
class RangeAugmentation(Probability):
    range: list[float] = _field([0.75, 1.25], "range of the random factor")


@dataclass
class NoiseAugmentation(Probability):
    prob: float = _field(0.1, "probability of applying it to a patch")
    std: float = _field(0.1, "largest standard deviation of the Gaussian noise")


@dataclass
class BlurAugmentation(Probability):
    prob: float = _field(0.2, "probability of applying it to a patch")
    sigma: list[float] = _field([0.5, 1.0], "Gaussian blur sigma range, voxels")


@dataclass
class AugmentationConfig:
    flip: FlipAugmentation = field(default_factory=FlipAugmentation)
    rotate90: Rotate90Augmentation = field(default_factory=Rotate90Augmentation)
    affine: AffineAugmentation = field(default_factory=AffineAugmentation)
    elastic: ElasticAugmentation = field(default_factory=ElasticAugmentation)
    noise: NoiseAugmentation = field(default_factory=NoiseAugmentation)
    blur: BlurAugmentation = field(default_factory=BlurAugmentation)
    brightness: RangeAugmentation = field(default_factory=lambda: RangeAugmentation(prob=0.15))
    contrast: RangeAugmentation = field(default_factory=lambda: RangeAugmentation(prob=0.15))
    gamma: RangeAugmentation = field(default_factory=lambda: RangeAugmentation(prob=0.3, range=[0.7, 1.5]))
    low_resolution: RangeAugmentation = field(default_factory=lambda: RangeAugmentation(prob=0.25, range=[0.5, 1.0]))


@dataclass
class LossConfig:
    name: Literal["dice_focal", "dice_ce", "dice", "focal", "ce", "weighted_ce"] = _field("dice_focal", "loss")
    dice_weight: float = _field(1.0, "weight of the Dice term")
    focal_weight: float = _field(1.0, "weight of the focal / cross-entropy term")
    gamma: float = _field(2.0, "focal-loss focusing parameter")
    include_background: bool = _field(False, "count the background class in the Dice term")
    class_weights: Union[list[float], None] = _field(None, "per-class weights of the focal / cross-entropy term")
    deep_supervision: bool = _field(True, "also supervise the coarser decoder outputs, weights halving per scale")
    border_w0: float = _field(10.0, "weighted_ce: weight of the gaps between touching objects (U-Net paper: 10)")
    border_sigma: float = _field(5.0, "weighted_ce: width of those gaps' weight, voxels (U-Net paper: 5)")


@dataclass
class OptimizerConfig:
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = _field("sgd", "optimiser (sgd uses Nesterov momentum)")
    lr: float = _field(0.01, "initial learning rate")
    momentum: float = _field(0.99, "sgd / rmsprop momentum")
    weight_decay: float = _field(3e-5, "L2 weight decay")
    grad_clip: Union[float, None] = _field(12.0, "clip the gradient norm to this (null: no clipping)")


@dataclass
class ScheduleConfig:
    name: Literal["poly", "cosine", "constant"] = _field("poly", "learning-rate schedule")
    warmup_epochs: int = _field(0, "epochs of linear warm-up")
    power: float = _field(0.9, "poly exponent")


@dataclass
class TrainingConfig:
    epochs: int = _field(100, "training epochs")
    iterations_per_epoch: int = _field(250, "training steps per epoch")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = _field(
        "auto", "auto: bf16 autocast on CUDA, fp32 on CPU (bf16 is slower than fp32 on CPUs without bf16 instructions)"
    )
    device: Literal["auto", "cpu", "cuda"] = _field("auto", "auto picks CUDA when present")
    seed: int = _field(0, "random seed")
    deterministic: bool = _field(False, "bit-identical runs (slower)")
    val_every: int = _field(1, "validate every N epochs")
    early_stopping: int = _field(0, "stop after N validations without improvement (0: never)")
    gradient_checkpointing: bool = _field(False, "recompute activations in backward to save memory")
    compile: bool = _field(False, "torch.compile the network")
    max_nonfinite_steps: int = _field(
        20, "steps with an inf/NaN loss are skipped; give up after this many in a row (1: at the first)"
    )
    init_weights: Union[str, None] = _field(
        None, "checkpoint or bundled model whose network weights start the run (fine-tuning; same network)"
    )


@dataclass
class InferenceConfig:
    roi_size: Union[list[int], None] = _field(None, "sliding-window size (default: the training patch size)")
    overlap: float = _field(0.5, "fraction of a window shared with its neighbour")
    blend: Literal["gaussian", "constant"] = _field("gaussian", "how overlapping windows are averaged")
    sw_batch_size: Union[int, Literal["auto"]] = _field(
        "auto", "windows per network call (auto: as many as fit in memory)"
    )
    tta_flips: list[int] = _field([], "spatial axes mirrored for test-time augmentation")
    mask_nonzero: bool = _field(
        False,
        "background wherever every input channel is 0 (MRI skull-stripped background; `volseg plan` turns "
        "it on for MRI)",
    )
    backend: Literal["auto", "torch", "openvino"] = _field(
        "auto",
        "what runs the network: torch, openvino (CPU only; pip install 'volseg[openvino]') or auto (OpenVINO on "
        "the CPU where it is installed, see volseg/inference/backends.py; torch otherwise and on CUDA)",
    )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


# ----------------------------------------------------------------------------- checking


def config_from_dict(values: dict[str, Any] | None) -> Config:
    """Build a :class:`Config` from nested dicts, checking every key, type and cross-field rule."""
    config = _build(Config, values or {}, "")
    check_config(config)
    return config


def _build(cls: type, values: Any, prefix: str, base: Any = None) -> Any:
    """An instance of the dataclass ``cls`` from ``values``, starting from ``base`` (its defaults).

    Starting from the default instance keeps a section's own defaults (e.g. gamma's range)
    for the keys a file or ``--set`` leaves out.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping of keys, got {values!r}")
    instance = copy.deepcopy(base) if base is not None else cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in names:
            options = [f"{prefix}{n}" for n in names]
            raise ConfigError(
                f"unknown config key {prefix + str(key)!r}{closest_hint(prefix + str(key), options)}; "
                f"allowed in {prefix.rstrip('.') or 'the top level'}: {', '.join(names)}"
            )
        if dataclasses.is_dataclass(hints[key]):
            setattr(instance, key, _build(hints[key], value, f"{prefix}{key}.", getattr(instance, key)))
        else:
            setattr(instance, key, _coerce(value, hints[key], f"{prefix}{key}"))
    return instance


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint``; returns it (ints widened to floats, dataclasses built)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{key}={value!r} is not valid; expected {_describe(hint)}"
        )
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        choices = ", ".join(repr(a) for a in args)
        hint_text = closest_hint(str(value), [str(a) for a in args])
        raise ConfigError(f"{key}={value!r} is not valid{hint_text}; allowed: {choices}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} is not valid; expected {_describe(hint)}")
        return [_coerce(item, args[0], f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} is not valid; expected {_describe(hint)}")
        return {_coerce(k, args[0], f"{key} key"): _coerce(v, args[1], f"{key}[{k!r}]") for k, v in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)  # PyYAML reads 1e-3 (no dot) as a string
    if hint is int and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)  # YAML mapping keys such as labels: {"1": ...} from JSON
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}={value!r} is not valid; expected {_describe(hint)}")


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return f"a mapping of {_describe(args[0])} to {_describe(args[1])}"
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def check_config(config: Config) -> None:
    """Rules that tie fields together; raises ``ConfigError`` naming the keys."""
    dims = config.network.spatial_dims
    _check_length(config.sampling.patch_size, dims, "sampling.patch_size")
    if config.inference.roi_size is not None:
        _check_length(config.inference.roi_size, dims, "inference.roi_size")
    if config.preprocessing.spacing is not None:
        _check_length(config.preprocessing.spacing, 3, "preprocessing.spacing")
    if config.data.fold >= config.data.num_folds or config.data.fold < -1:
        raise ConfigError(f"data.fold={config.data.fold} is not valid; allowed: -1 .. {config.data.num_folds - 1}")
    check_validation_cases(config.data.validation_cases)
    check_label_codes(config.data.label_codes, config.data.labels.values())
    if not 0.0 <= config.sampling.foreground_ratio <= 1.0:
        raise ConfigError(f"sampling.foreground_ratio={config.sampling.foreground_ratio} is not valid; allowed: 0 .. 1")
    if not 0.0 <= config.inference.overlap < 1.0:
        raise ConfigError(f"inference.overlap={config.inference.overlap} is not valid; allowed: 0 <= overlap < 1")
    for section in dataclasses.fields(config.augmentation):
        prob = getattr(config.augmentation, section.name).prob
        if not 0.0 <= prob <= 1.0:
            raise ConfigError(f"augmentation.{section.name}.prob={prob} is not valid; allowed: 0 .. 1")
    positive = {
        "sampling.batch_size": config.sampling.batch_size,
        "training.epochs": config.training.epochs,
        "training.iterations_per_epoch": config.training.iterations_per_epoch,
        "training.val_every": config.training.val_every,
        "training.max_nonfinite_steps": config.training.max_nonfinite_steps,
        "optimizer.lr": config.optimizer.lr,
    }
    if config.inference.sw_batch_size != "auto":
        positive["inference.sw_batch_size"] = config.inference.sw_batch_size
    if config.data.num_workers != "auto" and config.data.num_workers < 0:
        raise ConfigError(
            f"data.num_workers={config.data.num_workers} is not valid; allowed: an integer >= 0 or 'auto'"
        )
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}={value} is not valid; allowed: a positive number")


def check_validation_cases(size: Any) -> None:
    """``data.validation_cases``: 0, a fraction in (0, 1), or a whole number of cases."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0 or (size >= 1 and size != int(size)):
        raise ConfigError(
            f"data.validation_cases={size!r} is not valid; allowed: 0, a fraction between 0 and 1, "
            "or a whole number of cases"
        )


def _check_length(values: list[Any], expected: int, key: str) -> None:
    if len(values) != expected or any(v <= 0 for v in values):
        raise ConfigError(f"{key}={values} is not valid; give {expected} positive values (one per spatial axis)")


# ----------------------------------------------------------------------------- I/O


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dicts (JSON- and YAML-able)."""
    return dataclasses.asdict(config)


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to nested dicts; returns a copy."""
    result = _copy(values)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {override!r} is not valid; use section.key=value, e.g. training.epochs=10")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {override!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return result


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides and check it."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputFileError(f"{path}: cannot read the config ({error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return config_from_dict(apply_overrides(values or {}, overrides or []))


def dump_config(config: Config, path: str | Path | None = None, *, header: str = "") -> str:
    """The config as commented YAML (each key's help as a comment); written atomically to ``path`` if given."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    _dump_section(config, 0, lines)
    text = "\n".join(lines) + "\n"
    if path is not None:
        write_text(path, text)
    return text


_FLOW_WIDTH = 80


def _dump_section(section: Any, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if dataclasses.is_dataclass(value):
            if indent == 0:
                lines.append("")
            lines.append(f"{pad}{item.name}:")
            _dump_section(value, indent + 1, lines)
            continue
        rendered = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        rendered = rendered.removesuffix("\n...").removesuffix("...").strip()
        comment = item.metadata.get("help", "")
        suffix = f"  # {comment}" if comment else ""
        if isinstance(value, dict) and value and len(rendered) > _FLOW_WIDTH:
            # Long mappings (network options) read better one key per line.
            lines.append(f"{pad}{item.name}:{suffix}")
            for key, entry in value.items():
                flow = yaml.safe_dump({key: entry}, default_flow_style=True, width=10_000).strip()[1:-1]
                lines.append(f"{pad}  {flow}")
        else:
            lines.append(f"{pad}{item.name}: {rendered}{suffix}")
