"""Pictures of blends: Lupton-style colour images and per-source panels.

The colour mapping (:func:`lupton_rgb`) is plain numpy so that it works without optional
dependencies; the figures need matplotlib (``pip install cdeblend[plot]``) and are written
as PNG files. Every function returns the matplotlib ``Figure`` so that notebooks can show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - only for type hints
    from matplotlib.figure import Figure

__all__ = [
    "lupton_rgb",
    "plot_blend",
    "plot_field",
    "plot_loss",
    "plot_panels",
    "plot_single_band_child",
    "plot_source_panels",
    "rgb_bands",
]


def _pyplot() -> Any:
    """Import matplotlib with a non-interactive backend, or explain how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "cdeblend's figures need matplotlib: pip install 'cdeblend[plot]'"
        ) from err
    return plt


def rgb_bands(n_bands: int) -> tuple[int, int, int]:
    """Indices of the (red, green, blue) bands for ``n_bands`` bands ordered blue to red.

    With three to five bands (gri, griz, grizy) the first three are used, and with six or
    more (ugrizy) the u band is skipped, so that the colour image is the familiar g, r, i
    composite. One band gives a grey image; two bands use the redder one for red and green.
    """
    if n_bands < 1:
        raise ValueError(f"n_bands must be positive, got {n_bands}")
    if n_bands == 1:
        return (0, 0, 0)
    if n_bands == 2:
        return (1, 1, 0)
    blue = 1 if n_bands >= 6 else 0
    return (blue + 2, blue + 1, blue)


def lupton_rgb(
    images: np.ndarray,
    channels: Sequence[int] | None = None,
    stretch: float | None = None,
    q: float = 8.0,
    minimum: float = 0.0,
) -> np.ndarray:
    """Map a (B, H, W) image to an (H, W, 3) uint8 colour image (Lupton et al. 2004).

    The asinh stretch acts on the mean intensity ``I`` of the three channels, and each
    channel is scaled by the same factor ``asinh(q (I - minimum) / stretch) / (q I)``, so
    colours are preserved for bright sources instead of saturating to white.

    Parameters
    ----------
    images : numpy.ndarray
        (B, H, W) images, ordered blue to red, or (H, W) for a grey image.
    channels : sequence of int, optional
        Band indices for red, green and blue; by default :func:`rgb_bands`.
    stretch : float, optional
        Linear range of the stretch; by default the 99.5th percentile of the positive
        mean intensity divided by ``q`` (so bright cores do not all clip).
    q : float
        Softening of the asinh stretch.
    minimum : float
        Intensity mapped to black.

    Returns
    -------
    numpy.ndarray
        (H, W, 3) uint8 image; row 0 is the bottom row when shown with ``origin="lower"``.
    """
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"images must be (B, H, W) or (H, W), got shape {np.shape(images)}")
    if channels is None:
        channels = rgb_bands(arr.shape[0])
    if len(channels) != 3:
        raise ValueError(f"channels must name three bands (red, green, blue), got {channels}")
    rgb = np.stack([arr[int(c)] for c in channels], axis=-1)
    rgb = np.where(np.isfinite(rgb), rgb, 0.0) - minimum
    intensity = rgb.mean(axis=-1)
    if stretch is None:
        positive = intensity[intensity > 0]
        stretch = float(np.percentile(positive, 99.5)) / q if positive.size else 1.0
        stretch = stretch if stretch > 0 else 1.0
    if not stretch > 0:
        raise ValueError(f"stretch must be positive, got {stretch}")
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(intensity > 0, np.arcsinh(q * intensity / stretch) / (q * intensity), 0.0)
    scaled = rgb * factor[..., None]
    # Keep the hue of saturated pixels: divide by the largest channel where it exceeds 1.
    peak = scaled.max(axis=-1, keepdims=True)
    scaled = np.where(peak > 1, scaled / np.where(peak > 0, peak, 1), scaled)
    return (np.clip(scaled, 0, 1) * 255 + 0.5).astype(np.uint8)


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_panels(
    panels: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | Path | None = None,
    peaks: np.ndarray | None = None,
    suptitle: str | None = None,
    panel_size: float = 3.0,
    labels: Sequence[str] | None = None,
    vmax: float | None = None,
    keep_aspect: bool = False,
    origin: Sequence[int] | None = None,
) -> Figure:
    """Show a row of images (grey (H, W) or colour (H, W, 3)) side by side.

    Grey panels share one symmetric, asinh-like colour scale (from ``-vmax`` to ``vmax``,
    by default the largest absolute value) so that residuals of opposite sign are visible;
    colour panels are shown as they are. ``peaks`` (N, 2) (y, x) are marked with ``labels``
    (default: their index). With ``keep_aspect`` the figure's height follows the panels'
    aspect instead of being square panels with margins. With ``origin`` = (y0, x0), the
    panels' pixel (0, 0) in the full image, the axes are labelled in image pixels (peaks
    stay in panel coordinates; ticks on the first panel); without it the panels have no
    axes.
    """
    plt = _pyplot()
    if len(panels) != len(titles):
        raise ValueError(f"got {len(panels)} panels but {len(titles)} titles")
    aspect = 1.0
    if keep_aspect:  # the figure's height follows the first panel's aspect
        h, w = np.shape(panels[0])[:2]
        aspect = min(max(h / max(w, 1), 0.25), 3.0)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(panel_size * len(panels), panel_size * aspect + 0.4)
    )
    axes = np.atleast_1d(axes)
    if vmax is None:
        grey = [np.asarray(p) for p in panels if np.asarray(p).ndim == 2]
        vmax = max((float(np.max(np.abs(p))) for p in grey), default=1.0) or 1.0
    oy, ox = (0, 0) if origin is None else (int(origin[0]), int(origin[1]))
    for ax, panel, title in zip(axes, panels, titles, strict=True):
        panel = np.asarray(panel)
        h, w = panel.shape[:2]
        extent = (ox - 0.5, ox + w - 0.5, oy - 0.5, oy + h - 0.5)
        if panel.ndim == 2:
            from matplotlib.colors import AsinhNorm

            norm = AsinhNorm(linear_width=vmax / 50, vmin=-vmax, vmax=vmax)
            ax.imshow(
                panel,
                origin="lower",
                cmap="RdGy_r",
                norm=norm,
                interpolation="nearest",
                extent=extent,
            )
        else:
            ax.imshow(panel, origin="lower", interpolation="nearest", extent=extent)
        if peaks is not None:
            for k, (py, px) in enumerate(np.asarray(peaks).reshape(-1, 2)):
                text = str(k) if labels is None else str(labels[k])
                ax.text(px + ox, py + oy, text, color="cyan", ha="center", va="center", fontsize=8)
        ax.set_title(title, fontsize=9)
        if origin is None or ax is not axes[0]:
            ax.set_xticks([])
            ax.set_yticks([])
        else:  # image pixels on the first panel only: the panels share them (ticks are slow)
            ax.locator_params(nbins=4)
            ax.tick_params(labelsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


def plot_blend(
    images: np.ndarray,
    peaks: np.ndarray | None = None,
    path: str | Path | None = None,
    channels: Sequence[int] | None = None,
    title: str = "blend",
) -> Figure:
    """Colour image of a blend with its peaks numbered (the seed's ``colorBlend`` figure)."""
    rgb = lupton_rgb(images, channels=channels)
    return plot_panels([rgb], [title], path=path, peaks=peaks, panel_size=5.0)


def plot_single_band_child(
    image: np.ndarray,
    template: np.ndarray,
    conserved: np.ndarray,
    path: str | Path | None = None,
    peak: Sequence[int] | None = None,
    title: str | None = None,
    label: str | None = None,
    total_template: np.ndarray | None = None,
    origin: Sequence[int] | None = None,
) -> Figure:
    """Panels for one single-band child: image, template, residual, conserved image.

    All arrays are (H, W) on the parent frame; the peak is marked with ``label``. The
    residual is ``image - total_template`` (every child's template: what no template
    explains) when ``total_template`` is given, else ``image - template``. ``origin``: see
    :func:`plot_panels`.
    """
    image = np.asarray(image)
    template = np.asarray(template)
    conserved = np.asarray(conserved)
    peaks = None if peak is None else np.asarray(peak).reshape(1, 2)
    if total_template is None:
        residual, rtitle = image - template, "image - template"
    else:
        residual, rtitle = image - np.asarray(total_template), "image - all templates"
    return plot_panels(
        [image, template, residual, conserved],
        ["image", "template", rtitle, "conserved"],
        path=path,
        peaks=peaks,
        suptitle=title,
        labels=None if label is None else [label],
        vmax=float(max(np.abs(template).max(), np.abs(conserved).max())) or None,
        keep_aspect=True,
        origin=origin,
    )


def plot_source_panels(
    images: np.ndarray,
    model: np.ndarray,
    total_model: np.ndarray,
    conserved: np.ndarray,
    path: str | Path | None = None,
    peak: Sequence[int] | None = None,
    title: str | None = None,
    channels: Sequence[int] | None = None,
    label: str | None = None,
    origin: Sequence[int] | None = None,
) -> Figure:
    """The seed's per-source panels for a multi-band model.

    Parameters
    ----------
    images : numpy.ndarray
        (B, H, W) observation.
    model : numpy.ndarray
        (B, H, W) this source's model convolved to the observed PSFs.
    total_model : numpy.ndarray
        (B, H, W) the whole blend's convolved model (for the residual).
    conserved : numpy.ndarray
        (B, H, W) this source's re-apportioned (conserved) image.
    origin : sequence of int, optional
        (y0, x0) of the panels in the full image: axes in image pixels (see
        :func:`plot_panels`).
    """
    images = np.asarray(images, dtype=np.float64)
    if channels is None:
        channels = rgb_bands(images.shape[0])
    # One stretch for every panel so that they can be compared by eye.
    intensity = np.stack([images[c] for c in channels]).mean(axis=0)
    positive = intensity[intensity > 0]
    stretch = float(np.percentile(positive, 99.5)) / 8.0 if positive.size else 1.0
    stretch = stretch if stretch > 0 else 1.0
    # The residual has both signs: offset it so that 0 is grey and -3 sigma is black, with
    # sigma a robust (MAD) spread of its mean intensity; on the image's stretch, negative
    # residuals would all be black and small ones invisible.
    residual = images - np.asarray(total_model, dtype=np.float64)
    r_int = np.stack([residual[c] for c in channels]).mean(axis=0)
    spread = 1.4826 * float(np.median(np.abs(r_int - np.median(r_int))))
    level = 3.0 * spread if spread > 0 else stretch
    panels = [
        lupton_rgb(images, channels, stretch=stretch),
        lupton_rgb(model, channels, stretch=stretch),
        lupton_rgb(residual, channels, stretch=level, minimum=-level),
        lupton_rgb(conserved, channels, stretch=stretch),
    ]
    peaks = None if peak is None else np.asarray(peak).reshape(1, 2)
    return plot_panels(
        panels,
        ["observation", "model", "residual (all sources; grey = 0)", "re-apportioned"],
        path=path,
        peaks=peaks,
        suptitle=title,
        labels=None if label is None else [label],
        origin=origin,
    )


def _field_layout(
    shape: tuple[int, int], max_inches: float = 14.0, min_panel: float = 4.5
) -> tuple[bool, float]:
    """Whether to stack the two field panels vertically (wide fields), and inches per pixel.

    About 3 screen pixels per image pixel, at least ``min_panel`` inches along a panel's
    long side and at most ``max_inches`` along the figure's.
    """
    H, W = shape
    stacked = W > 1.3 * H
    long_side = max(2 * H, W) if stacked else max(H, 2 * W)
    inch = max(0.03, min_panel / max(H, W))
    return stacked, min(inch, max_inches / long_side)


def plot_field(
    images: np.ndarray,
    model: np.ndarray,
    catalog: Any,
    path: str | Path | None = None,
    channels: Sequence[int] | None = None,
    label_limit: int = 300,
    unmodelled: np.ndarray | None = None,
    model_name: str = "model",
) -> Figure:
    """The whole field: the image with parent boxes, ids and peaks, and its residual.

    Parameters
    ----------
    images : numpy.ndarray
        (B, H, W) image.
    model : numpy.ndarray
        (B, H, W) model of every fitted parent (0 elsewhere).
    catalog : table
        The catalog of :func:`cdeblend.deblend_catalog` (``is_parent``, ``id``, ``box_*``,
        ``peak_y``/``peak_x``, ``skipped``, ``failed``).
    path : path, optional
        Where to write the PNG.
    channels : sequence of int, optional
        Bands for red, green, blue (default :func:`rgb_bands`).
    label_limit : int
        Parent ids are written when there are at most this many parents.
    unmodelled : numpy.ndarray, optional
        (H, W) bool: pixels of parents that have no model (isolated or skipped ones), shown
        grey in the residual instead of as their whole flux.

    Notes
    -----
    The figure keeps the field's aspect (two panels side by side, or stacked for a wide
    field). The image is an asinh (Lupton) colour image; the residual ``image - model`` is
    the mean of the same three bands on the same asinh stretch, in a diverging map (red
    positive, blue negative, white 0), so that over- and under-subtraction both show and
    compare with the image. Boxes: yellow fitted, grey isolated or skipped, red failed;
    crosses: the children's peaks (cyan) and the parents' first peaks.
    """
    plt = _pyplot()
    from matplotlib.colors import AsinhNorm

    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 2:
        images = images[None]
    model = np.asarray(model, dtype=np.float64).reshape(images.shape)
    if channels is None:
        channels = rgb_bands(images.shape[0])
    intensity = np.stack([images[c] for c in channels]).mean(axis=0)
    finite = intensity[np.isfinite(intensity)]
    positive = finite[finite > 0]
    top = float(np.percentile(positive, 99.5)) if positive.size else 1.0
    top = top if top > 0 else 1.0
    stretch = top / 8.0  # as lupton_rgb's default (q = 8)
    rgb = lupton_rgb(images, channels, stretch=stretch)
    residual = np.stack([images[c] - model[c] for c in channels]).mean(axis=0)
    residual = np.where(np.isfinite(residual), residual, 0.0)
    if unmodelled is not None:
        residual = np.ma.masked_array(residual, mask=np.asarray(unmodelled, dtype=bool))
    H, W = intensity.shape
    stacked, inch = _field_layout((H, W))
    rows, cols = (2, 1) if stacked else (1, 2)
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * W * inch + 0.8, rows * H * inch + 0.9), squeeze=False
    )
    ax_img, ax_res = axes.ravel()
    ax_img.imshow(rgb, origin="lower", interpolation="nearest")
    norm = AsinhNorm(linear_width=stretch, vmin=-top, vmax=top)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.8")
    im = ax_res.imshow(
        residual,
        origin="lower",
        cmap=cmap,
        norm=norm,
        interpolation="nearest",
    )
    bar = fig.colorbar(im, ax=ax_res, fraction=0.04, pad=0.02)
    ticks = [-top, -stretch, 0.0, stretch, top]
    bar.set_ticks(ticks, labels=[f"{v:.3g}" for v in ticks])
    bar.ax.tick_params(labelsize=7)
    _draw_parents(ax_img, catalog, label_limit, ids=True)
    _draw_parents(ax_res, catalog, label_limit, ids=False)
    ax_img.set_title("image, parent ids and boxes\n+ children's peaks", fontsize=9)
    ax_res.set_title(
        f"image - {model_name} (same asinh stretch), red > 0, blue < 0"
        + ("\ngrey: parents without a model (isolated)" if unmodelled is not None else ""),
        fontsize=9,
    )
    for ax in (ax_img, ax_res):
        ax.set_xlim(-0.5, W - 0.5)
        ax.set_ylim(-0.5, H - 0.5)
        ax.set_xlabel("x (pixels)", fontsize=8)
        ax.set_ylabel("y (pixels)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _finish(fig, path)


def _draw_parents(ax: Any, catalog: Any, label_limit: int, ids: bool) -> None:
    """Boxes of the parents (colour by outcome), their ids and the children's peaks."""
    plt = _pyplot()
    parent = np.asarray(catalog["is_parent"], dtype=bool)
    col = {
        name: np.asarray(catalog[name])
        for name in (
            "id",
            "box_y0",
            "box_x0",
            "box_height",
            "box_width",
            "skipped",
            "failed",
            "n_children",
            "peak_y",
            "peak_x",
        )
    }
    n_parents = int(parent.sum())
    fontsize = 7 if n_parents < 60 else 5
    for k in np.flatnonzero(parent):
        y0, x0 = col["box_y0"][k], col["box_x0"][k]
        h, w = col["box_height"][k], col["box_width"][k]
        if col["failed"][k]:
            color = "red"
        elif col["n_children"][k] > 0:
            color = "yellow"
        else:
            color = "0.6"
        ax.add_patch(
            plt.Rectangle((x0 - 0.5, y0 - 0.5), w, h, fill=False, edgecolor=color, linewidth=0.7)
        )
        if ids and n_parents <= label_limit:
            ax.text(
                x0,
                y0 + h - 1,
                str(int(col["id"][k])),
                color=color,
                fontsize=fontsize,
                ha="left",
                va="top",
            )
        if col["n_children"][k] == 0:
            ax.plot(
                col["peak_x"][k],
                col["peak_y"][k],
                marker="+",
                color=color,
                markersize=4,
                linewidth=0,
            )
    kids = ~parent
    if kids.any():
        ax.plot(
            col["peak_x"][kids],
            col["peak_y"][kids],
            marker="+",
            color="cyan",
            markersize=4,
            markeredgewidth=0.8,
            linewidth=0,
        )


def plot_loss(
    loss_history: Sequence[float], path: str | Path | None = None, title: str = "loss"
) -> Figure:
    """Loss per iteration, on a log scale when it stays positive."""
    plt = _pyplot()
    loss = np.asarray(loss_history, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(np.arange(len(loss)), loss, marker=".")
    if loss.size and np.all(loss > 0):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("0.5 sum w (I - model)^2")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)
