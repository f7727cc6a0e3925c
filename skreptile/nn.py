"""Networks for the ``module`` parameter of the Reptile estimators.

Any ``torch.nn.Module`` works as ``module``; this module holds the small
convolutional network of the Reptile paper's few-shot image experiments.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ConvNet(nn.Module):
    """The few-shot image classifier of Nichol et al. (2018), after Finn et al. (2017).

    ``n_layers`` blocks of a 3x3 convolution with stride 2 and "same" padding,
    batch normalisation and ReLU, then one linear layer on the flattened
    features.  With the defaults and 28x28 images (Omniglot) the feature maps
    shrink 28 -> 14 -> 7 -> 4 -> 2.

    Written to be passed as ``module`` to :class:`~skreptile.ReptileClassifier`,
    which calls it as ``ConvNet(n_features, n_outputs, input_shape=...)`` with
    the images' shape.

    Parameters
    ----------
    n_features : int
        Number of input values of one image, ``channels * height * width``.
    n_outputs : int
        Number of outputs (classes of a task).
    input_shape : tuple of int or None, default=None
        ``(channels, height, width)`` of the images.  None means one channel
        and a square image of ``n_features`` pixels.
    n_filters : int, default=64
        Channels of every convolution.
    n_layers : int, default=4
        Number of convolutional blocks.
    batch_norm : bool, default=True
        Whether every block normalises its activations over the batch.  The
        classifier evaluates batch statistics without transduction unless told
        otherwise (see :class:`~skreptile.ReptileClassifier`).

    Examples
    --------
    >>> import torch
    >>> from skreptile.nn import ConvNet
    >>> net = ConvNet(784, 5, input_shape=(1, 28, 28), n_filters=8)
    >>> net(torch.zeros(3, 1, 28, 28)).shape
    torch.Size([3, 5])
    """

    def __init__(
        self,
        n_features: int,
        n_outputs: int,
        input_shape: tuple[int, int, int] | None = None,
        n_filters: int = 64,
        n_layers: int = 4,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if input_shape is None:
            side = math.isqrt(int(n_features))
            if side * side != n_features:
                raise ValueError(
                    f"ConvNet needs input_shape=(channels, height, width): {n_features} features "
                    "are not one square single-channel image."
                )
            input_shape = (1, side, side)
        channels, height, width = (int(s) for s in input_shape)
        if channels * height * width != n_features:
            raise ValueError(
                f"input_shape={tuple(input_shape)} has {channels * height * width} values, "
                f"but the inputs have {n_features} features."
            )
        blocks: list[nn.Module] = []
        for _ in range(n_layers):
            blocks.append(nn.Conv2d(channels, n_filters, 3, stride=2, padding=1))
            if batch_norm:
                blocks.append(nn.BatchNorm2d(n_filters))
            blocks.append(nn.ReLU())
            channels = n_filters
            height, width = (height + 1) // 2, (width + 1) // 2
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(channels * height * width, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the logits of a batch of images.

        Parameters
        ----------
        x : torch.Tensor of shape (batch, channels, height, width)
            The images.

        Returns
        -------
        logits : torch.Tensor of shape (batch, n_outputs)
            One score per class.
        """
        return self.classifier(self.features(x).flatten(1))
