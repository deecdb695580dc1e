"""Where datasets live and how their records look, shared by every builder and source.

A record is a dict: ``video`` uint8 [T, H, W, 3] (T = 1 for images), ``caption`` str,
``fps`` float32, ``index`` int64 (its position in its split), plus dataset-specific fields.
Prepared datasets are TFDS datasets in array_record files, written and read without
TensorFlow, in generation order (record ``i`` of a split is the one generated from index ``i``).
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import os
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

DATA_DIR_ENV = "IMAGEN_VIDEO_DATA"


def default_data_dir(data_dir: str | None = None) -> str:
    """``data_dir`` if given, else $IMAGEN_VIDEO_DATA, else ~/tensorflow_datasets."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or os.path.join("~", "tensorflow_datasets")
    return os.path.expanduser(chosen)


def shape_name(frames: int, height: int, width: int, fps: float) -> str:
    """Builder-config name of clips of one shape, e.g. ``"16x64x64_24fps"``."""
    return f"{frames}x{height}x{width}_{fps:g}fps"


def clip_features(height: int, width: int, extra: dict[str, Any]) -> tfds.features.FeaturesDict:
    """Features of a clip record: frames of one size, any count (images are one frame)."""
    return tfds.features.FeaturesDict(
        {
            "video": tfds.features.Tensor(
                shape=(None, height, width, 3), dtype=np.uint8, encoding="zlib"
            ),
            "caption": tfds.features.Text(),
            "fps": tfds.features.Scalar(dtype=np.float32),
            "index": tfds.features.Scalar(dtype=np.int64),
            **extra,
        }
    )


def int_list_feature() -> tfds.features.Tensor:
    """A variable-length int64 vector (e.g. the digits of a clip)."""
    return tfds.features.Tensor(shape=(None,), dtype=np.int64)


class ProceduralSource:
    """A grain random-access source whose record ``i`` is ``render(i)``, computed on demand.

    ``render`` must be picklable (a module-level function or a functools.partial of one) so
    that grain worker processes can rebuild the source.
    """

    def __init__(self, render: Callable[[int], dict], length: int):
        if length <= 0:
            raise ValueError(f"a procedural source needs a positive length, got {length}")
        self.render = render
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"record {index} out of range for a source of {self.length}")
        return self.render(int(index))

    def __repr__(self) -> str:
        # Stable across processes (grain checks it on restore): no function addresses.
        render = getattr(self.render, "func", self.render)
        args = (getattr(self.render, "args", ()), getattr(self.render, "keywords", {}))
        name = f"{render.__module__}.{render.__qualname__}"
        return f"ProceduralSource({name}{args!r}, length={self.length})"


@dataclasses.dataclass(eq=False)
class SyntheticClipConfig(tfds.core.BuilderConfig):
    """Shape and size of a rendered dataset; subclasses add the renderer's parameters."""

    frames: int = 16
    height: int = 64
    width: int = 64
    fps: float = 24.0
    num_train: int = 2000  # clips rendered from the training sources
    num_test: int = 200  # clips rendered from the held-out sources
    num_images: int = 2000  # single captioned images (training sources), for joint training
    seed: int = 0

    SPEC: ClassVar[type]  # the renderer's parameter dataclass

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "test": self.num_test, "images": self.num_images}

    def spec(self) -> Any:
        """The renderer's parameters, taken from this config's fields of the same names."""
        return self.SPEC(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self.SPEC)})


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, abc.ABC):
    """A builder of this package: records in generation order, its code located by file.

    Locating the code by its file keeps TFDS from probing package resources through a
    backport module that recent Pythons do not install.
    """

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, config: tfds.core.BuilderConfig | None = None, **kwargs):
        if not isinstance(config, tfds.core.BuilderConfig):
            raise ValueError(
                f"{type(self).__name__} needs config=<its BuilderConfig> saying what to build; "
                "prepared datasets are read with tfds.data_source('name/config', data_dir=...)"
            )
        super().__init__(config=config, **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))


class SyntheticClipBuilder(ArrayRecordBuilder):
    """A dataset whose splits are rendered record by record from an index.

    Its config's ``spec()`` gives the renderer's parameters (also stored as the dataset's
    metadata); prepared records equal what the procedural source renders for the same index.
    """

    @abc.abstractmethod
    def extra_features(self) -> dict[str, Any]:
        """Dataset-specific features beyond video, caption, fps and index."""

    @abc.abstractmethod
    def render(self, spec: Any, split: str, index: int) -> dict:
        """Record ``index`` of ``split`` under renderer parameters ``spec``."""

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=clip_features(config.height, config.width, self.extra_features()),
            metadata=tfds.core.MetadataDict(dataclasses.asdict(config.spec())),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            split: self._generate_examples(split, count)
            for split, count in self.builder_config.split_sizes().items()
            if count > 0
        }

    def _generate_examples(self, split: str, count: int):
        spec = self.builder_config.spec()
        for index in range(count):
            yield index, self.render(spec, split, index)


def open_prepared(dataset: str, config_name: str, split: str, data_dir: str | None = None):
    """``(source, metadata)`` of a prepared split, read with tfds.data_source (no TensorFlow)."""
    root = default_data_dir(data_dir)
    name = f"{dataset}/{config_name}"
    try:
        builder = tfds.builder(name, data_dir=root)
    except Exception as err:  # tfds raises several types for a missing dataset
        raise FileNotFoundError(_missing_message(name, root)) from err
    if not builder.is_prepared():
        raise FileNotFoundError(_missing_message(name, root))
    if split not in builder.info.splits:
        raise ValueError(
            f"dataset {name} has no split {split!r}; it has {sorted(builder.info.splits)}"
        )
    return builder.as_data_source(split), dict(builder.info.metadata or {})


def _missing_message(name: str, root: str) -> str:
    dataset = name.split("/")[0]
    return (
        f"no prepared dataset {name} under {root}: run `imagen-video prepare {dataset} "
        f"--data-dir {root} ...` with the same shape, or set data.source='procedural'"
    )
