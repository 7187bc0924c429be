"""Datasets of xmem: decoding, caching, subsets, standardization, device placement.

Modules, one job each:
  arrays         ImageArrays, the decoded raw images every source returns
  sources        scikit-learn's digits; torchvision's on-disk CIFAR-10/100 and SVHN files
  parquet_table  a Parquet table of encoded images (split, label, image)
  cache          decoded arrays on disk under <data_dir>/xmem-cache
  images         load_image_arrays: pick the source, go through the cache
  subsets        stratified subsets, label shuffles, alignment probes (seeded)
  standardize    per-image standardization
  dataset        load_dataset: one trial's tensors on its device

No DataLoader: the trainer indexes device-resident tensors directly.
"""

from workers.data.arrays import ImageArrays
from workers.data.dataset import DeviceDataset, load_dataset
from workers.data.images import load_image_arrays
from workers.data.standardize import per_image_standardize
from workers.data.subsets import probe_indices, shuffled_labels, stratified_subset

__all__ = [
    "DeviceDataset",
    "ImageArrays",
    "load_dataset",
    "load_image_arrays",
    "per_image_standardize",
    "probe_indices",
    "shuffled_labels",
    "stratified_subset",
]
