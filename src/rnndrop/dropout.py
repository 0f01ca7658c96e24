"""Dropout modules for sequences and channel maps: Keras ``noise_shape``, spatial, locked, embedding.

All of them draw their masks with :func:`rnndrop.masks.bernoulli_mask` (the one sampler of the
package): entries are exactly ``0`` (probability ``p``) or ``1 / (1 - p)``, so the expectation of
the output equals the input. Masks are drawn **once per forward call** in training mode and never
stored; in eval mode every module is the identity. ``p`` lies in ``[0, 1)``; ``p = 0`` is the
identity in both modes.

What each module shares (the axes of size 1 in its mask, broadcast over the input):

=====================  =======================  =================================================
module                 input                    mask shape (one draw per entry)
=====================  =======================  =================================================
``Dropout``            any                      ``noise_shape`` (default: the input's shape)
``SpatialDropout1d``   ``(B, T, C)``            ``(B, 1, C)``: a channel off for all timesteps
``LockedDropout``      ``(B, T, *F)``/packed    ``(B, 1, *F)``: one mask per sequence (Gal)
``SpatialDropout2d``   ``(N, C, H, W)``         ``(N, C, 1, 1)`` (channels_first)
``SpatialDropout3d``   ``(N, C, D, H, W)``      ``(N, C, 1, 1, 1)`` (channels_first)
``EmbeddingDropout``   token ids, any shape     ``(num_embeddings,)``: whole word types, whole batch
=====================  =======================  =================================================

Sequence modules are batch first ``(B, T, C)`` by default, like Keras; ``batch_first=False``
means time-major ``(T, B, C)`` as torch.nn's recurrent layers.

Every module has a ``masks_per_sample`` property: True when rows of the batch get independent
masks. :func:`rnndrop.mc_predict` relies on it to decide whether Monte-Carlo samples may be
vectorised by repeating the batch.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .errors import RnnDropTypeError, RnnDropValueError
from .masks import bernoulli_mask, check_choice, check_probability

DataFormat = Literal["channels_first", "channels_last"]
DATA_FORMAT_CHOICES: tuple[str, ...] = ("channels_first", "channels_last")

NoiseShape = Sequence[int | None]


def _check_generator(generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise RnnDropTypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _check_float_input(input: object, argument: str = "input") -> torch.Tensor:
    if not isinstance(input, torch.Tensor):
        raise RnnDropTypeError(f"{argument} must be a Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        # A {0, 1/(1-p)} mask cannot be represented in an integer dtype.
        raise RnnDropTypeError(f"{argument} must be a floating point tensor, got dtype {input.dtype}")
    return input


def check_noise_shape(noise_shape: object, argument: str = "noise_shape") -> tuple[int | None, ...] | None:
    """Validate a Keras-style noise shape (entries ``None`` or ints >= 1) without an input."""
    if noise_shape is None:
        return None
    if isinstance(noise_shape, (str, bytes)) or not isinstance(noise_shape, Sequence):
        raise RnnDropTypeError(
            f"{argument} must be a tuple of ints or None (e.g. (None, 1, None)), got {type(noise_shape).__name__}"
        )
    out: list[int | None] = []
    for i, entry in enumerate(noise_shape):
        if entry is None:
            out.append(None)
            continue
        if isinstance(entry, bool):
            raise RnnDropTypeError(f"{argument}[{i}] must be an int or None, got bool")
        try:
            size = operator.index(entry)
        except TypeError:
            raise RnnDropTypeError(f"{argument}[{i}] must be an int or None, got {type(entry).__name__}") from None
        if size < 1:
            raise RnnDropValueError(f"{argument}[{i}] must be None or an int >= 1, got {size}")
        out.append(size)
    return tuple(out)


def resolve_noise_shape(noise_shape: NoiseShape | None, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Keras's concrete noise shape: ``None`` entries take the input's size.

    Args:
        noise_shape: one entry per input axis, in the input's own axis order: ``None`` (the
            input's size: independent draws along that axis), ``1`` (one draw shared along that
            axis) or the input's size itself.
        input_shape: the shape of the tensor the mask will multiply.
    Returns:
        The mask shape, broadcastable to ``input_shape``.
    """
    checked = check_noise_shape(noise_shape)
    shape = tuple(input_shape)
    if checked is None:
        return shape
    if len(checked) != len(shape):
        raise RnnDropValueError(
            f"noise_shape must have one entry per input axis: the input is {len(shape)}-D {shape}, "
            f"noise_shape {tuple(checked)} has {len(checked)} entries"
        )
    out = []
    for axis, (entry, size) in enumerate(zip(checked, shape)):
        if entry is None:
            out.append(size)
        elif entry == 1 or entry == size:
            out.append(entry)
        else:
            raise RnnDropValueError(
                f"noise_shape[{axis}] must be None, 1 or {size} (the input's size on axis {axis}), got {entry}"
            )
    return tuple(out)


def dropout(
    input: torch.Tensor,
    p: float = 0.5,
    *,
    noise_shape: NoiseShape | None = None,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Keras ``Dropout``: ``input * mask`` with a mask of shape ``noise_shape``, broadcast.

    Args:
        input: a floating point tensor of any shape.
        p: drop probability in ``[0, 1)``.
        noise_shape: see :func:`resolve_noise_shape`; ``None`` = independent per element.
        training: when False the input is returned unchanged.
        generator: the ``torch.Generator`` to draw from (default: torch's global RNG).
    Returns:
        A tensor of the input's shape; entries are ``0`` or ``input / (1 - p)``.
    """
    p = check_probability(p, "p")
    _check_float_input(input)
    generator = _check_generator(generator)
    shape = resolve_noise_shape(noise_shape, input.shape)  # validate even when nothing is drawn
    if not training or p == 0.0:
        return input
    mask = bernoulli_mask(shape, p, dtype=input.dtype, device=input.device, generator=generator)
    return input * mask


class _MaskDropout(nn.Module):
    """Base of the tensor dropout modules: one broadcast mask per call, shape from ``_mask_shape``."""

    def __init__(self, p: float, generator: torch.Generator | None) -> None:
        super().__init__()
        self.p = check_probability(p, "p")
        self.generator = _check_generator(generator)

    def _mask_shape(self, input: torch.Tensor) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def masks_per_sample(self) -> bool:
        """True when each row of the batch draws its own mask (see :func:`rnndrop.mc_predict`)."""
        return True

    def forward(self, input: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``input`` times a scaled Bernoulli mask of this module's mask shape in training; ``input`` in eval.

        ``generator`` overrides the module's generator for this call.
        """
        _check_float_input(input)
        shape = self._mask_shape(input)  # validates the input's layout in eval mode too
        if not self.training or self.p == 0.0:
            return input
        gen = _check_generator(generator) or self.generator
        return input * bernoulli_mask(shape, self.p, dtype=input.dtype, device=input.device, generator=gen)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Dropout(_MaskDropout):
    """Keras ``Dropout(rate, noise_shape)`` for any tensor, batch first by default.

    Args:
        p: drop probability in ``[0, 1)`` (Keras ``rate``); kept entries are scaled by ``1/(1-p)``.
        noise_shape: ``None`` (default) — an independent draw per element (and timestep), like
            ``torch.nn.Dropout`` — or one entry per input axis **in the input's own axis
            order**: ``None`` takes the input's size, ``1`` shares one draw along that axis.
            For ``(B, T, C)``: ``(None, 1, None)`` = the same mask at every timestep (locked);
            ``(None, None, 1)`` = whole timesteps dropped; ``(1, None, None)`` = one mask for
            the whole batch. A Keras ``noise_shape`` is batch first, so for a time-major input
            swap its first two entries.
        batch_first: where the batch axis is (``(B, T, ...)`` if True, ``(T, B, ...)`` if False).
            It does not reorder ``noise_shape``; it only tells :attr:`masks_per_sample` which
            axis holds the samples.
        generator: a ``torch.Generator`` to draw from (default: torch's global RNG);
            ``forward(generator=...)`` overrides it for one call.

    Shape: input and output are the same, any number of dimensions (``noise_shape`` fixes it).
    """

    def __init__(
        self,
        p: float = 0.5,
        noise_shape: NoiseShape | None = None,
        batch_first: bool = True,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, generator)
        self.noise_shape = check_noise_shape(noise_shape)
        self.batch_first = bool(batch_first)

    def _mask_shape(self, input: torch.Tensor) -> tuple[int, ...]:
        return resolve_noise_shape(self.noise_shape, input.shape)

    @property
    def masks_per_sample(self) -> bool:
        if self.noise_shape is None:
            return True
        axis = 0 if self.batch_first else 1
        # An explicit 1 on the batch axis shares one mask across the batch.
        return len(self.noise_shape) <= axis or self.noise_shape[axis] != 1

    def extra_repr(self) -> str:
        s = f"p={self.p}"
        if self.noise_shape is not None:
            s += f", noise_shape={self.noise_shape}"
        if not self.batch_first:
            s += ", batch_first=False"
        return s


class SpatialDropout1d(_MaskDropout):
    """Keras ``SpatialDropout1D``: drop whole feature channels of a sequence, for all timesteps.

    The mask has shape ``(B, 1, C)`` (``(1, B, C)`` time-major; ``(1, C)`` for an unbatched
    ``(T, C)`` input): each sample draws which of its ``C`` channels are off, and a channel that
    is off is zero at every timestep. Useful when neighbouring timesteps are strongly
    correlated, so that per-element dropout barely regularises (Tompson et al. 2015).

    This is ``Dropout(p, noise_shape=(None, 1, None))`` and the same mask as
    :class:`LockedDropout`; ``torch.nn.Dropout1d`` does the same on channels-first ``(N, C, L)``.

    Args:
        p: drop probability in ``[0, 1)``.
        batch_first: input ``(B, T, C)`` if True (default, Keras), ``(T, B, C)`` if False.
        generator: a ``torch.Generator`` to draw from (default: torch's global RNG).
    """

    def __init__(self, p: float = 0.5, batch_first: bool = True, *, generator: torch.Generator | None = None) -> None:
        super().__init__(p, generator)
        self.batch_first = bool(batch_first)

    def _mask_shape(self, input: torch.Tensor) -> tuple[int, ...]:
        if input.dim() == 2:  # unbatched (T, C)
            return (1, input.shape[1])
        if input.dim() != 3:
            layout = "(B, T, C)" if self.batch_first else "(T, B, C)"
            raise RnnDropValueError(
                f"{type(self).__name__} input must be 3-D {layout} or 2-D (T, C), got {input.dim()}-D "
                f"of shape {tuple(input.shape)}"
            )
        if self.batch_first:
            return (input.shape[0], 1, input.shape[2])
        return (1, input.shape[1], input.shape[2])

    def extra_repr(self) -> str:
        return f"p={self.p}, batch_first={self.batch_first}"


class LockedDropout(_MaskDropout):
    """Locked (variational) dropout of a sequence: one mask per sequence, reused at every timestep.

    Gal & Ghahramani (2016) and AWD-LSTM (Merity et al. 2017) use it on the inputs and outputs of
    recurrent layers and between stacked layers (rnndrop's layers do the latter internally with
    ``locked_dropout=True``). The mask has shape ``(B, 1, *F)`` for a batch-first input
    ``(B, T, *F)``, ``(1, B, *F)`` time-major; a 2-D input is one unbatched sequence ``(T, F)``
    and gets a ``(1, F)`` mask.

    A ``PackedSequence`` is accepted too: each sequence gets one ``(*F)`` mask applied to all of
    its steps, drawn in the original batch order, so that the same generator state gives the
    same masks as the padded tensor ``(B, T, *F)``.

    Args:
        p: drop probability in ``[0, 1)``.
        batch_first: required. ``True``: tensor input ``(B, T, ...)`` (Keras, fastai's ``RNNDropout``);
            ``False``: ``(T, B, ...)`` (torch.nn's and rnndrop's recurrent layers by default, salesforce's
            AWD-LSTM). The two layouts give different masks on the same tensor (one per sequence, or one
            per timestep shared by the batch), so there is no default to guess wrong.
        generator: a ``torch.Generator`` to draw from (default: torch's global RNG).
    """

    def __init__(
        self, p: float = 0.5, batch_first: bool | None = None, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(p, generator)
        if not isinstance(batch_first, bool):
            raise RnnDropTypeError(
                f"LockedDropout needs batch_first=True for (batch, time, features) input or batch_first=False for "
                f"(time, batch, features) input (torch.nn.LSTM's default layout), got {batch_first!r}: a mask "
                "locked along the wrong axis would silently not be locked over time"
            )
        self.batch_first = batch_first

    def _mask_shape(self, input: torch.Tensor) -> tuple[int, ...]:
        if input.dim() < 2:
            raise RnnDropValueError(
                f"LockedDropout input must have a time axis and features, at least 2-D, got shape {tuple(input.shape)}"
            )
        if input.dim() == 2:  # unbatched (T, F)
            return (1, input.shape[1])
        if self.batch_first:
            return (input.shape[0], 1, *input.shape[2:])
        return (1, *input.shape[1:])

    def forward(  # type: ignore[override]
        self, input: torch.Tensor | PackedSequence, *, generator: torch.Generator | None = None
    ) -> torch.Tensor | PackedSequence:
        """``input`` (a tensor in this module's layout, or a ``PackedSequence``) with one mask per sequence.

        ``generator`` overrides the module's generator for this call; eval mode returns ``input``.
        """
        if not isinstance(input, PackedSequence):
            return super().forward(input, generator=generator)
        data = _check_float_input(input.data, "input.data")
        if not self.training or self.p == 0.0:
            return input
        gen = _check_generator(generator) or self.generator
        batch = int(input.batch_sizes[0])
        mask = bernoulli_mask((batch, *data.shape[1:]), self.p, dtype=data.dtype, device=data.device, generator=gen)
        if input.sorted_indices is not None:
            # Packed rows follow the length-sorted order: row j of a step is sequence sorted_indices[j].
            mask = mask.index_select(0, input.sorted_indices.to(data.device))
        rows = torch.cat([torch.arange(int(n)) for n in input.batch_sizes]).to(data.device)
        return PackedSequence(
            data * mask.index_select(0, rows), input.batch_sizes, input.sorted_indices, input.unsorted_indices
        )

    def extra_repr(self) -> str:
        return f"p={self.p}, batch_first={self.batch_first}"


class _SpatialDropoutNd(_MaskDropout):
    spatial_dims: int

    def __init__(
        self,
        p: float = 0.5,
        data_format: DataFormat = "channels_first",
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, generator)
        self.data_format: DataFormat = check_choice(data_format, "data_format", DATA_FORMAT_CHOICES)  # type: ignore[assignment]

    def _mask_shape(self, input: torch.Tensor) -> tuple[int, ...]:
        d = self.spatial_dims
        if input.dim() not in (d + 1, d + 2):
            layout = "(N, C, " if self.data_format == "channels_first" else "(N, "
            layout += ", ".join("DHW"[3 - d :]) + (")" if self.data_format == "channels_first" else ", C)")
            raise RnnDropValueError(
                f"{type(self).__name__} input must be {d + 2}-D {layout} or {d + 1}-D unbatched, got "
                f"{input.dim()}-D of shape {tuple(input.shape)}"
            )
        batched = input.dim() == d + 2
        channel_axis = (1 if batched else 0) if self.data_format == "channels_first" else input.dim() - 1
        keep = {channel_axis, 0} if batched else {channel_axis}
        return tuple(size if axis in keep else 1 for axis, size in enumerate(input.shape))

    def extra_repr(self) -> str:
        return f"p={self.p}, data_format={self.data_format!r}"


class SpatialDropout2d(_SpatialDropoutNd):
    """Keras ``SpatialDropout2D``: drop whole feature maps of ``(N, C, H, W)`` inputs.

    Mask ``(N, C, 1, 1)``. ``data_format="channels_first"`` (default, torch's layout; the same
    as ``torch.nn.Dropout2d``) or ``"channels_last"`` — ``(N, H, W, C)``, mask ``(N, 1, 1, C)``,
    Keras's default layout. Unbatched ``(C, H, W)`` / ``(H, W, C)`` inputs are accepted.

    Args:
        p: drop probability in ``[0, 1)``.
        data_format: ``"channels_first"`` or ``"channels_last"``.
        generator: a ``torch.Generator`` to draw from (default: torch's global RNG).
    """

    spatial_dims = 2


class SpatialDropout3d(_SpatialDropoutNd):
    """Keras ``SpatialDropout3D``: drop whole feature volumes of ``(N, C, D, H, W)`` inputs.

    Mask ``(N, C, 1, 1, 1)`` (``"channels_first"``, default, as ``torch.nn.Dropout3d``) or
    ``(N, 1, 1, 1, C)`` for ``"channels_last"`` ``(N, D, H, W, C)`` (Keras's default layout).
    Unbatched inputs (one dimension fewer) are accepted.

    Args:
        p: drop probability in ``[0, 1)``.
        data_format: ``"channels_first"`` or ``"channels_last"``.
        generator: a ``torch.Generator`` to draw from (default: torch's global RNG).
    """

    spatial_dims = 3


def embedding_dropout(
    input: torch.Tensor,
    weight: torch.Tensor,
    p: float = 0.1,
    *,
    training: bool = True,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    generator: torch.Generator | None = None,
    scale: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Embedding lookup with whole rows of ``weight`` dropped (AWD-LSTM's embedding dropout).

    One mask of shape ``(num_embeddings,)`` per call: a dropped word type is zero at **every**
    position of **every** sequence of the batch; kept rows are scaled by ``1/(1-p)``. The row
    ``padding_idx`` is never dropped nor scaled, so padding looks the same in training and eval.

    The result equals ``F.embedding(input, weight * mask[:, None], ...)`` but is computed as
    ``F.embedding(input, weight, ...) * mask[input]``: no copy of the matrix, and ``sparse``,
    ``max_norm`` (which renormalises ``weight`` in place, as ``nn.Embedding`` does) and
    ``scale_grad_by_freq`` behave exactly as in ``F.embedding``.

    Args:
        input: integer token ids of any shape ``(*)``.
        weight: ``(num_embeddings, embedding_dim)``.
        p: fraction of word types dropped, in ``[0, 1)``.
        training: when False this is plain ``F.embedding``.
        padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse: as ``F.embedding``.
        generator: a ``torch.Generator`` to draw from (default: torch's global RNG).
        scale: multiplies the embeddings (a number, or a tensor broadcasting against the output), in
            training and eval: fastai's and salesforce's ``scale``. ``None``: no scaling.
    Returns:
        ``(*, embedding_dim)``.
    """
    p = check_probability(p, "p")
    generator = _check_generator(generator)
    if not isinstance(input, torch.Tensor) or input.is_floating_point() or input.is_complex() or (
        input.dtype == torch.bool
    ):
        got = input.dtype if isinstance(input, torch.Tensor) else type(input).__name__
        raise RnnDropTypeError(f"input must be an integer tensor of token ids, got {got}")
    weight = _check_float_input(weight, "weight")
    if weight.dim() != 2:
        raise RnnDropValueError(f"weight must be 2-D (num_embeddings, embedding_dim), got shape {tuple(weight.shape)}")
    out = F.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
    if scale is not None:
        out = out * scale
    if not training or p == 0.0:
        return out
    rows = bernoulli_mask((weight.shape[0],), p, dtype=weight.dtype, device=weight.device, generator=generator)
    if padding_idx is not None:
        rows[padding_idx] = 1.0  # negative indices count from the end, as in nn.Embedding
    return out * rows[input].unsqueeze(-1)


class EmbeddingDropout(nn.Module):
    """Wrap an ``nn.Embedding`` so that training calls drop whole word types (rows of its matrix).

    AWD-LSTM's embedding dropout (Merity et al. 2017; Gal & Ghahramani 2016, section 4): one
    ``(num_embeddings,)`` mask per forward call, shared by all positions and all sequences of
    the batch, kept rows scaled by ``1/(1-p)``. The embedding's ``padding_idx``, ``max_norm``,
    ``norm_type``, ``scale_grad_by_freq`` and ``sparse`` are honoured; the padding row is never
    dropped. Eval mode is the plain embedding. The wrapped module stays reachable as
    ``.embedding`` (state dict keys ``embedding.weight``).

    Against fastai's ``EmbeddingDropout(emb, embed_p)`` and salesforce's ``embedded_dropout``: the
    same law (a Bernoulli mask over word types, kept rows scaled by ``1/(1-p)``) and ``scale=``; fastai
    also draws for the padding row, which changes nothing while that row is zero (``nn.Embedding``
    initialises it to zero and never updates it); the draws themselves differ (another RNG use).

    Args:
        embedding: the ``torch.nn.Embedding`` to wrap (its weight is used, not copied).
        p: fraction of word types dropped per call, in ``[0, 1)``.
        generator: a ``torch.Generator`` to draw from (default: torch's global RNG).

    Shape: input ``(*)`` integer ids, output ``(*, embedding_dim)``.
    """

    def __init__(self, embedding: nn.Embedding, p: float = 0.1, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(embedding, nn.Embedding):
            raise RnnDropTypeError(f"embedding must be a torch.nn.Embedding, got {type(embedding).__name__}")
        self.embedding = embedding
        self.p = check_probability(p, "p")
        self.generator = _check_generator(generator)

    @property
    def masks_per_sample(self) -> bool:
        """False: one mask serves the whole batch (see :func:`rnndrop.mc_predict`)."""
        return False

    def forward(
        self, input: torch.Tensor, *, generator: torch.Generator | None = None,
        scale: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Look up ``input`` (token ids, any shape) in the embedding with whole rows dropped (training only).

        ``generator`` overrides the module's generator for this call; ``scale`` multiplies the
        embeddings (fastai's ``scale``), see :func:`embedding_dropout`.
        """
        e = self.embedding
        return embedding_dropout(
            input,
            e.weight,
            self.p,
            training=self.training,
            padding_idx=e.padding_idx,
            max_norm=e.max_norm,
            norm_type=e.norm_type,
            scale_grad_by_freq=e.scale_grad_by_freq,
            sparse=e.sparse,
            generator=_check_generator(generator) or self.generator,
            scale=scale,
        )

    def extra_repr(self) -> str:
        return f"p={self.p}"
