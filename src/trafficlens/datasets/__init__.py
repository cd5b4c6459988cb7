"""Datasets: the on-disk format that `prep` writes and everything else reads."""

from trafficlens.datasets.dataset import Dataset
from trafficlens.datasets.writer import DatasetWriter

__all__ = ["Dataset", "DatasetWriter"]
