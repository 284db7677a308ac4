"""Draws ``demo.jpg``, the demo scene of ``fsa-seg predict`` (run it to recreate the file).

A simple countryside scene made procedurally with Pillow and numpy: sky, sun, clouds, hills,
grass, a road, a house and two trees. Deterministic (fixed seed); CC0, see README.md.

    python fsa_seg/assets/make_demo_image.py [OUT]
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 640, 480
HORIZON = 270


def draw_demo_image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Sky: vertical gradient from deep to pale blue.
    t = np.linspace(0.0, 1.0, HORIZON)[:, None]
    top, bottom = np.array([70, 130, 215]), np.array([175, 210, 240])
    sky = (top * (1 - t) + bottom * t)[:, None, :].repeat(WIDTH, axis=1)
    # Grass: green with a darker far edge and fine noise.
    t = np.linspace(0.0, 1.0, HEIGHT - HORIZON)[:, None]
    far, near = np.array([95, 150, 60]), np.array([60, 140, 40])
    grass = (far * (1 - t) + near * t)[:, None, :].repeat(WIDTH, axis=1)
    grass += rng.normal(0, 10, grass.shape[:2])[..., None]
    image = Image.fromarray(np.clip(np.concatenate([sky, grass]), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)

    # Sun and clouds.
    draw.ellipse((520, 40, 590, 110), fill=(255, 225, 90))
    for cx, cy, scale in ((150, 70, 1.0), (360, 110, 0.8)):
        for dx, dy, r in ((0, 0, 28), (30, -10, 34), (62, 0, 26), (30, 12, 26)):
            r = int(r * scale)
            x, y = cx + int(dx * scale), cy + int(dy * scale)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(245, 247, 250))
    # Distant hills.
    draw.polygon([(0, HORIZON), (0, 220), (120, 185), (260, 230), (400, 195), (520, 215),
                  (640, 190), (640, HORIZON)], fill=(110, 150, 95))
    # Road: a trapezoid narrowing towards the horizon.
    draw.polygon([(300, HORIZON), (340, HORIZON), (520, HEIGHT), (200, HEIGHT)],
                 fill=(105, 105, 110))
    for y0 in range(HORIZON + 15, HEIGHT, 40):  # centre line dashes
        y1 = min(y0 + 18, HEIGHT)
        w0, w1 = 1 + (y0 - HORIZON) // 40, 1 + (y1 - HORIZON) // 40
        draw.polygon([(320 - w0, y0), (320 + w0, y0), (320 + w1, y1), (320 - w1, y1)],
                     fill=(235, 225, 120))
    # House: walls, roof, door, windows.
    draw.rectangle((60, 230, 230, 360), fill=(200, 80, 60))
    draw.polygon([(45, 235), (145, 160), (245, 235)], fill=(110, 55, 45))
    draw.rectangle((125, 290, 165, 360), fill=(90, 55, 35))
    for x0 in (80, 180):
        draw.rectangle((x0, 255, x0 + 35, 290), fill=(190, 220, 240), outline=(250, 250, 250),
                       width=3)
    # Trees: trunk and a crown of overlapping blobs.
    for tx, ty, scale in ((450, 330, 1.0), (590, 290, 0.7)):
        s = lambda v: int(v * scale)  # noqa: E731
        draw.rectangle((tx - s(10), ty - s(40), tx + s(10), ty + s(60)), fill=(100, 65, 35))
        for dx, dy, r in ((0, -90, 55), (-40, -60, 40), (40, -60, 40), (0, -40, 45)):
            x, y, r = tx + s(dx), ty + s(dy), s(r)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(35, 105, 40))
    image = image.filter(ImageFilter.GaussianBlur(0.8))
    # Fine texture so the scene is less flat.
    pixels = np.asarray(image).astype(np.float32) + rng.normal(0, 3, (HEIGHT, WIDTH, 1))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


if __name__ == '__main__':
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name('demo.jpg')
    draw_demo_image().save(out, quality=88, optimize=True)
    print(f'{out}: {out.stat().st_size} bytes')
