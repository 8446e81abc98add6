"""Datasets: loaders for what users have (CelebA, UTKFace, image folder + CSV) and SynthFaces."""

from fairloop.data.datasets import FaceDataset, load_dataset

__all__ = ["FaceDataset", "load_dataset"]
