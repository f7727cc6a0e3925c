"""Loaders of data sets for few-shot learning (nothing is downloaded)."""

from ._omniglot import load_omniglot

__all__ = ["load_omniglot"]
