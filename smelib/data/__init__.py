"""The data API: open a segmentation dataset, split it, augment it, and load what a training config asks for.

One entry point serves training, evaluation and the book::

    bundle = load_data(config)          # DataBundle: train / val / test datasets, class names, normalisation
    image, mask = unpack(bundle.test[0])  # (C, H, W) float normalised, (H, W) int64 (255 = ignore)

The modules behind it, lowest first: :mod:`~smelib.data.dataset` (layouts, readers, checks, Dataset classes),
:mod:`~smelib.data.augment` (flips, right-angle and free rotations, rescale, crop), :mod:`~smelib.data.splits`
(the official, grouped and leaky splits and the copy-group detection behind them), :mod:`~smelib.data.loading`
(:func:`~smelib.data.loading.load_data`, the seeded training view, batching), :mod:`~smelib.data.convert` (native to
VOC) and
:mod:`~smelib.data.download` (NEU-Seg at a pinned commit).
"""

from smelib.data.augment import Augment
from smelib.data.dataset import (
    IGNORE_INDEX,
    NEU_SEG_CLASSES,
    NEU_SEG_MEAN,
    NEU_SEG_STD,
    DatasetError,
    DatasetInfo,
    InMemorySegDataset,
    StreamingSegDataset,
    check_dataset,
    colour_mask_to_index,
    defect_class,
    open_dataset,
    read_image,
    read_mask,
    validate_mask_values,
)
from smelib.data.loading import (
    DataBundle,
    TrainView,
    checkpoint_data,
    epoch_batches,
    load_data,
    normalize_image,
    pad_collate,
    unpack,
)
from smelib.data.splits import Groups, find_groups, load_groups, make_split, split_summary

__all__ = [
    "IGNORE_INDEX", "NEU_SEG_CLASSES", "NEU_SEG_MEAN", "NEU_SEG_STD", "Augment", "DataBundle", "DatasetError",
    "DatasetInfo", "Groups", "InMemorySegDataset", "StreamingSegDataset", "TrainView", "check_dataset",
    "checkpoint_data", "colour_mask_to_index", "defect_class", "epoch_batches", "find_groups", "load_data",
    "load_groups", "make_split", "normalize_image", "open_dataset", "pad_collate", "read_image", "read_mask",
    "split_summary", "unpack", "validate_mask_values",
]
