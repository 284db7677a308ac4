"""Colours, label-map PNGs and overlays with a legend for segmentation results.

- :func:`make_palette`: a fixed colour per class index, distinct for the first 256 indices (the
  first 20 from a qualitative palette, the rest spread by the golden angle in hue).
- :func:`save_label_png`: label map → palette PNG (mode ``'P'``, pixel value = class index,
  palette entry i = the colour of class i); 16-bit grayscale PNG above 256 classes.
- :func:`render_overlay`: image blended with the class colours, plus a legend of the classes that
  occur (largest share first).
"""
import colorsys
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Qualitative colours (tab20-like, reordered so the first ones differ the most).
_BASE_COLOURS = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
]
PALETTE_PNG_MAX_CLASSES = 256


def make_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 RGB colours; colour i depends only on i (not on num_classes)."""
    colours: List[Tuple[int, int, int]] = []
    seen = set()
    index = 0
    while len(colours) < num_classes:
        if index < len(_BASE_COLOURS):
            colour = _BASE_COLOURS[index]
        else:
            k = index - len(_BASE_COLOURS)
            hue = (k * 0.618033988749895) % 1.0
            saturation = (0.55, 0.8, 0.95)[k % 3]
            value = (0.95, 0.7, 0.85, 0.55)[(k // 3) % 4]
            colour = tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, saturation, value))
        index += 1
        if colour in seen:  # keep every colour distinct
            continue
        seen.add(colour)
        colours.append(colour)
    return np.array(colours, dtype=np.uint8).reshape(num_classes, 3)


def save_label_png(labels: np.ndarray, path, palette: Optional[np.ndarray] = None) -> None:
    """Write a label map: a palette PNG (mode ``'P'``) whose pixel values are the class indices,
    or, for more than 256 classes, a 16-bit grayscale PNG of the indices."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f'label map must be 2-D, got shape {labels.shape}')
    if labels.size and (labels.min() < 0 or labels.max() >= 65536):
        raise ValueError('label values must lie in 0..65535')
    num_classes = len(palette) if palette is not None else int(labels.max(initial=0)) + 1
    if num_classes > PALETTE_PNG_MAX_CLASSES or labels.max(initial=0) >= PALETTE_PNG_MAX_CLASSES:
        Image.fromarray(labels.astype(np.uint16)).save(path)
        return
    if palette is None:
        palette = make_palette(num_classes)
    height, width = labels.shape
    image = Image.frombytes('P', (width, height), np.ascontiguousarray(labels, np.uint8).tobytes())
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[:len(palette)] = palette
    image.putpalette(flat.reshape(-1).tolist())
    image.save(path)


def colourise(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) labels → (H, W, 3) uint8 colours."""
    return np.asarray(palette, dtype=np.uint8)[np.asarray(labels)]


def blend(image: np.ndarray, labels: np.ndarray, palette: np.ndarray,
          opacity: float = 0.5) -> np.ndarray:
    """The RGB image with the class colours laid over it at ``opacity``."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f'opacity must lie in [0, 1], got {opacity}')
    colours = colourise(labels, palette).astype(np.float32)
    mixed = (1.0 - opacity) * np.asarray(image, dtype=np.float32) + opacity * colours
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed-size bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> Tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _percent(share: float) -> str:
    return '<0.1%' if 0 < share < 0.0005 else f'{share * 100:.1f}%'


def draw_legend(image: Image.Image, entries: Sequence[Tuple[str, Sequence[int], float]],
                font_size: Optional[int] = None) -> Image.Image:
    """The image with a legend panel on its right: one swatch, name and share per entry."""
    height = image.height
    font_size = font_size or int(min(max(height / 28, 12), 28))
    font = _font(font_size)
    scratch = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    lines = [f'{name}  {_percent(share)}' for name, _, share in entries]
    text_w = max((_text_size(scratch, line, font)[0] for line in lines), default=0)
    row = int(font_size * 1.6)
    pad = max(font_size // 2, 4)
    swatch = font_size
    panel_w = pad * 3 + swatch + text_w
    panel_h = pad * 2 + row * len(entries)
    canvas = Image.new('RGB', (image.width + panel_w, max(height, panel_h)), (255, 255, 255))
    canvas.paste(image.convert('RGB'), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = image.width + pad
    for i, ((_, colour, _), line) in enumerate(zip(entries, lines)):
        y = pad + i * row
        draw.rectangle((x0, y, x0 + swatch, y + swatch), fill=tuple(int(c) for c in colour),
                       outline=(0, 0, 0))
        draw.text((x0 + swatch + pad, y + swatch // 2), line, fill=(0, 0, 0), font=font,
                  anchor='lm' if hasattr(font, 'getbbox') else None)
    return canvas


def render_overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                   palette: Optional[np.ndarray] = None, opacity: float = 0.5) -> Image.Image:
    """Blend the class colours over the RGB image and add a legend of the classes that occur,
    largest share first."""
    palette = make_palette(len(class_names)) if palette is None else palette
    counts = np.bincount(np.asarray(labels).reshape(-1), minlength=len(class_names))
    total = max(int(counts.sum()), 1)
    order = sorted((i for i in range(len(class_names)) if counts[i]), key=lambda i: -counts[i])
    entries = [(class_names[i], palette[i], counts[i] / total) for i in order]
    return draw_legend(Image.fromarray(blend(image, labels, palette, opacity)), entries)
