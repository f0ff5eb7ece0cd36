"""Weight <-> conductance mapping: crossbar tiles and the device arrangements that share them.

A crossbar tile holds one block of the weight matrix, by default 64x64 (HaLoRA's partition,
after NeuroSim's block-wise mapping). Each tile is scaled on its own so that ``max|W_tile|``
spans the full conductance range; edge tiles of a matrix whose size is not a multiple of
the tile are smaller and use the max over their real elements (:func:`tile_reference`).
Noise quoted "in % of g_max" is therefore ``sigma * max|W_tile|`` in weight units.

Two ways to cut a matrix into tiles (the ``split`` key of every tiled model):

* ``fixed`` (default): tiles of exactly ``tile`` from ``[0, 0]``, smaller edge tiles
  (NeuroSim, HaLoRA);
* ``even``: each dimension cut into ``ceil(n / tile)`` pieces of near-equal size (they differ
  by at most 1), at most ``tile`` each. This is IBM aihwkit's TileModuleArray
  (``get_split_sizes``), whose MappingParameter defaults are at most 512 x 512 per tile
  (``max_output_size`` rows x ``max_input_size`` columns) with each tile scaled by its own
  abs-max (no ``weight_scaling_omega`` remapping by default): ``tile=512,split=even``
  (:data:`AIHWKIT_TILE`) reproduces aihwkit's tiling, e.g. a 576-wide matrix becomes two
  tiles of 288, not 512 + 64.

``tile=full`` (:data:`FULL`, also per dimension: ``fullx512``) makes the whole dimension one
tile, as aihwkit with ``max_input_size = max_output_size = 0`` (no splitting).

As in IBM aihwkit, which keeps its conductance converters apart from its noise models, the
device models take the mapping from one of two objects:

* :class:`DifferentialPair`: a signed weight is ``g+ - g-`` with the unused device at
  ``g_min`` (aihwkit's SinglePairConductanceConverter; Wan 2022, stuck-at faults,
  quantization).
* :class:`SingleDevice`: one device per weight, weight 0 at mid-range (aihwkit's
  SingleDeviceConductanceConverter; the CMO/HfOx devices, which IBM characterised as one
  device per weight).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from halora.errors import UsageError

Tile = tuple[int, int]
DEFAULT_TILE: Tile = (64, 64)
"""The paper's 64x64 block partition (HaLoRA, after NeuroSim's block-wise mapping)."""

FULL = 2**31 - 1
"""Tile size meaning "the whole dimension" (``tile=full``); resolved per matrix by :class:`TileLayout`."""

AIHWKIT_TILE: Tile = (512, 512)
"""IBM aihwkit's default largest tile, rows x columns (MappingParameter ``max_output_size`` x
``max_input_size`` = 512 x 512); with ``split=even`` it reproduces aihwkit's tiling."""

SPLITS = ("fixed", "even")
"""How a matrix is cut into tiles: ``fixed`` tiles with smaller edge tiles (the default), or
``even`` near-equal tiles of at most the tile size (aihwkit)."""
DEFAULT_SPLIT = "fixed"

_TILE_FORMS = "an integer or rows x cols, e.g. 64 or 32x64, or full (the whole matrix)"


def as_tile(value: Any, owner: str = "tile") -> Tile:
    """Normalise ``64``, ``(32, 64)`` (rows x cols) or ``"full"`` to a tuple, rejecting sizes < 1."""
    if isinstance(value, str):
        try:
            value = parse_tile(value)
        except ValueError as exc:
            raise UsageError(f"{owner}: tile must be {exc}, got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise UsageError(f"{owner}: tile must be {_TILE_FORMS}")
    rows, cols = value
    if rows < 1 or cols < 1:
        raise UsageError(f"{owner}: tile sizes must be >= 1, got {rows}x{cols}; e.g. tile=64")
    return (rows, cols)


def _parse_size(text: str) -> int:
    return FULL if text.strip() == "full" else int(text)


def parse_tile(text: str) -> Tile:
    """``64``, ``32x64``, ``full`` or ``fullx512`` from a spec string; ValueError names the forms."""
    parts = text.lower().split("x")
    try:
        sizes = [_parse_size(p) for p in parts]
    except ValueError:
        raise ValueError(_TILE_FORMS) from None
    if len(sizes) == 1:
        return (sizes[0], sizes[0])
    if len(sizes) == 2:
        return (sizes[0], sizes[1])
    raise ValueError(_TILE_FORMS)


def format_tile(tile: Tile) -> str:
    """A tile as a spec writes it: ``64``, ``32x64``, ``full``, ``fullx512``."""
    rows, cols = ("full" if size == FULL else str(size) for size in tile)
    return rows if rows == cols else f"{rows}x{cols}"


def as_split(value: Any, owner: str = "split") -> str:
    """``fixed`` or ``even`` (case-insensitive), else a UsageError naming both."""
    split = str(value).lower()
    if split not in SPLITS:
        raise UsageError(f"{owner}: split must be one of {', '.join(SPLITS)}, got {value!r}")
    return split


def _runs(n: int, size: int, split: str) -> tuple[tuple[int, int, int], ...]:
    """``(start, stop, tile size)`` runs of equal tiles that cover ``0..n`` along one dimension.

    ``fixed`` keeps the given size (the last tile may be cut short); ``even`` uses aihwkit's
    ``ceil(n / size)`` pieces, the first ``n % pieces`` of them one longer than the rest.
    """
    if size == FULL:
        return ((0, n, max(n, 1)),)
    if split == "fixed":
        return ((0, n, size),)
    pieces = max(1, -(-n // size))
    base, extra = divmod(n, pieces)
    if extra == 0:
        return ((0, n, max(base, 1)),)
    cut = extra * (base + 1)
    return ((0, cut, base + 1), (cut, n, base))


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one matrix lie: per dimension, runs of equal-size tiles."""

    rows: tuple[tuple[int, int, int], ...]
    cols: tuple[tuple[int, int, int], ...]

    @classmethod
    def of(cls, shape: tuple[int, ...], tile: Tile, split: str = DEFAULT_SPLIT) -> TileLayout:
        n_rows, n_cols = shape
        return cls(_runs(n_rows, tile[0], split), _runs(n_cols, tile[1], split))

    @property
    def uniform(self) -> Tile | None:
        """The one tile size when every tile has it (edge tiles aside), else None."""
        if len(self.rows) == 1 and len(self.cols) == 1:
            return (self.rows[0][2], self.cols[0][2])
        return None

    def maxima(self, weight: torch.Tensor) -> torch.Tensor:
        """``max|W|`` of every tile, shape ``[row tiles, column tiles]``."""
        blocks = [
            torch.cat([tile_max(weight[r0:r1, c0:c1], (tr, tc)) for c0, c1, tc in self.cols], dim=1)
            for r0, r1, tr in self.rows
        ]
        return torch.cat(blocks, dim=0)

    def tile_ids(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The tile index of every row and of every column."""
        return _ids(self.rows, device), _ids(self.cols, device)


def _ids(runs: tuple[tuple[int, int, int], ...], device: torch.device) -> torch.Tensor:
    parts, first = [], 0
    for start, stop, size in runs:
        parts.append(torch.arange(stop - start, device=device) // size + first)
        first += -(-(stop - start) // size)
    return torch.cat(parts)


def tile_max(weight: torch.Tensor, tile: Tile) -> torch.Tensor:
    """``max|W|`` of every tile: shape ``[ceil(R/tr), ceil(C/tc)]``.

    Edge tiles are zero-padded; since ``|W| >= 0`` the padding never raises a tile's max,
    so an edge tile's value is the max over its real elements only.
    """
    tr, tc = tile
    rows, cols = weight.shape
    n_r, n_c = -(-rows // tr), -(-cols // tc)
    a = weight.abs()
    if n_r * tr != rows or n_c * tc != cols:
        a = F.pad(a, (0, n_c * tc - cols, 0, n_r * tr - rows))
    return a.reshape(n_r, tr, n_c, tc).amax(dim=(1, 3))


def _expand_tiles(small: torch.Tensor, tile: Tile, shape: torch.Size) -> torch.Tensor:
    """Broadcast one value per tile back to a full ``shape`` matrix (edge tiles cropped)."""
    tr, tc = tile
    n_r, n_c = small.shape
    full = small[:, None, :, None].expand(n_r, tr, n_c, tc).reshape(n_r * tr, n_c * tc)
    rows, cols = shape
    if full.shape != (rows, cols):
        full = full[:rows, :cols].contiguous()
    return full


def tile_reference(
    weight_f32: torch.Tensor, tile: Tile | int = DEFAULT_TILE, split: str = DEFAULT_SPLIT
) -> torch.Tensor:
    """Per-element ``max|W|`` of the element's tile, same shape as ``weight_f32``.

    ``tile`` is ``(rows, cols)`` (or one int for square tiles, :data:`FULL` for a whole
    dimension) and ``split`` how the matrix is cut (:data:`SPLITS`); with ``fixed`` tiles
    start at ``[0, 0]`` and edge tiles of a matrix that is not a multiple of the tile use the
    max over their real elements only. This is the conductance reference of the block-wise
    crossbar mapping (``max|W_tile|`` -> ``g_max``; after NeuroSim's block-wise mapping, as
    used by HaLoRA).
    """
    tile = as_tile(tile, "tile_reference")
    split = as_split(split, "tile_reference")
    if weight_f32.dim() != 2:
        raise ValueError(f"tile_reference needs a 2-D matrix, got shape {tuple(weight_f32.shape)}")
    if weight_f32.numel() == 0:
        return torch.zeros_like(weight_f32)
    layout = TileLayout.of(weight_f32.shape, tile, split)
    uniform = layout.uniform
    if uniform is not None:
        return _expand_tiles(tile_max(weight_f32, uniform), uniform, weight_f32.shape)
    row_ids, col_ids = layout.tile_ids(weight_f32.device)
    return layout.maxima(weight_f32)[row_ids[:, None], col_ids[None, :]]


def nonzero_or_one(reference: torch.Tensor) -> torch.Tensor:
    """``reference`` with zeros replaced by 1, for dividing (all-zero tiles map back to 0)."""
    return torch.where(reference > 0, reference, torch.ones_like(reference))


@dataclass(frozen=True, eq=False)
class TileScale:
    """How one matrix was mapped, per element: what :meth:`to_weight` needs to map back."""

    reference: torch.Tensor
    """``max|W_tile|`` of the element's tile; 0 in all-zero tiles."""
    us_per_weight: torch.Tensor
    """Conductance per weight unit in µS (finite everywhere; all-zero tiles use ref 1)."""

    def zero_empty_tiles(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` with every element of an all-zero tile set back to exactly 0."""
        return torch.where(self.reference > 0, weight, torch.zeros_like(weight))


@dataclass(frozen=True)
class _TileMapping:
    """Tiles of ``tile`` elements cut by ``split``, each mapped linearly onto [gmin, gmax] µS."""

    tile: Tile
    gmin: float
    gmax: float
    split: str = DEFAULT_SPLIT

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile", as_tile(self.tile, type(self).__name__))
        object.__setattr__(self, "split", as_split(self.split, type(self).__name__))
        if not (math.isfinite(self.gmin) and math.isfinite(self.gmax) and 0 <= self.gmin < self.gmax):
            raise UsageError(f"{type(self).__name__}: need 0 <= gmin < gmax, got {self.gmin}, {self.gmax}")

    def full_scale(self, w: torch.Tensor) -> torch.Tensor:
        """Per element, the weight magnitude that drives a device to ``gmax``: its tile's max|W|."""
        return tile_reference(w, self.tile, self.split)

    def full_scale_at(self, w: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """:meth:`full_scale` at the cells ``(rows[i], cols[i])`` only, without a full-size matrix."""
        layout = TileLayout.of(w.shape, self.tile, self.split)
        row_ids, col_ids = layout.tile_ids(w.device)
        return layout.maxima(w)[row_ids[rows], col_ids[cols]]

    def _scale(self, w: torch.Tensor, us_at_full_scale: float) -> TileScale:
        """The per-element scale that maps ``max|W_tile|`` to ``us_at_full_scale`` µS."""
        reference = self.full_scale(w)
        us_per_weight = nonzero_or_one(reference).reciprocal_().mul_(us_at_full_scale)
        return TileScale(reference, us_per_weight)


@dataclass(frozen=True)
class DifferentialPair(_TileMapping):
    """A signed weight as two devices, ``W = (g+ - g-) / s`` with ``s = (gmax - gmin) / max|W_tile|``.

    The active device (``g+`` for ``W > 0``, ``g-`` for ``W < 0``) holds
    ``gmin + |W| * s``, the other one sits at ``gmin``, so ``+-max|W_tile|`` drives the
    active device to ``gmax``. IBM aihwkit's SinglePairConductanceConverter, per tile.
    """

    cells_per_weight: ClassVar[int] = 2
    """RRAM devices per weight (the energy model charges array energy and area per device)."""

    def to_conductance(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, TileScale]:
        """``(g+, g-, scale)`` in µS for the float32 matrix ``w``; ``scale`` maps them back."""
        scale = self._scale(w, self.gmax - self.gmin)
        g_pos = w.clamp(min=0).mul_(scale.us_per_weight).add_(self.gmin)
        g_neg = w.neg().clamp_(min=0).mul_(scale.us_per_weight).add_(self.gmin)
        return g_pos, g_neg, scale

    def to_weight(self, g_pos: torch.Tensor, g_neg: torch.Tensor, scale: TileScale) -> torch.Tensor:
        """``W = (g+ - g-) / s`` (the offsets ``gmin`` cancel); all-zero tiles give exactly 0."""
        return scale.zero_empty_tiles((g_pos - g_neg).div_(scale.us_per_weight))


@dataclass(frozen=True)
class SingleDevice(_TileMapping):
    """One device per weight, symmetric per tile: ``g = mid + W * s``.

    ``mid = (gmin + gmax) / 2`` and ``s = (gmax - gmin) / 2 / max|W_tile|``, so ``W = 0`` sits
    at mid-range and ``+-max|W_tile|`` at ``gmax`` / ``gmin``. IBM aihwkit's
    SingleDeviceConductanceConverter maps ``[min W, max W]`` of each tile instead (W = 0 then
    sits wherever the tile's range puts it); symmetric keeps ``W = 0`` at mid-range and uses
    the per-tile max of every other model.
    """

    cells_per_weight: ClassVar[int] = 1
    """RRAM devices per weight (the energy model charges array energy and area per device)."""

    @property
    def mid(self) -> float:
        """The conductance of weight 0, in µS."""
        return 0.5 * (self.gmin + self.gmax)

    def to_conductance(self, w: torch.Tensor) -> tuple[torch.Tensor, TileScale]:
        """``(g, scale)`` in µS for the float32 matrix ``w``; ``scale`` maps ``g`` back."""
        scale = self._scale(w, 0.5 * (self.gmax - self.gmin))
        return w * scale.us_per_weight + self.mid, scale

    def to_weight(self, g: torch.Tensor, scale: TileScale) -> torch.Tensor:
        """``W = (g - mid) / s``; all-zero tiles give exactly 0. Overwrites ``g`` (saves a copy)."""
        return scale.zero_empty_tiles(g.sub_(self.mid).div_(scale.us_per_weight))
