"""Out-of-domain images for the in-domain score: everyday pictures that are not cluttered-MNIST canvases.

Everything is rendered or comes with an installed package, so the set rebuilds anywhere from a seed:
photos shipped by scikit-learn and matplotlib, procedural textures, noise, gradients, shapes, charts
drawn with matplotlib, text and user-interface mock-ups drawn with Pillow in matplotlib's DejaVu fonts.
Each family also varies size, crop, colour and, where it applies, JPEG compression and polarity.

The families are split in two. :data:`DEVELOPMENT_FAMILIES` guided the design of the score;
:data:`HELD_OUT_FAMILIES` (other photos, chart styles, screenshots, fonts) were rendered to report on
the first design, and were looked at, beside the development families, while choosing the current one.
The families no design was chosen on are in :mod:`models.outliers_evaluation`.
"""

from __future__ import annotations

import functools
import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.random import Generator
from PIL import Image, ImageDraw, ImageFont

Family = Callable[[Generator], Image.Image]


# ---------------------------------------------------------------- helpers


def _size(rng: Generator, low: int = 40, high: int = 400) -> tuple[int, int]:
    """A random width and height, log-uniform, aspect ratio within 1:2 to 2:1."""
    area = float(np.exp(rng.uniform(np.log(low * low), np.log(high * high))))
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    width = int(np.clip(round(np.sqrt(area * aspect)), 16, 2 * high))
    height = int(np.clip(round(np.sqrt(area / aspect)), 16, 2 * high))
    return width, height


def _color(rng: Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))  # type: ignore[return-value]


def _finish(image: Image.Image, rng: Generator) -> Image.Image:
    """Sometimes grayscale, sometimes JPEG-compressed: as clients send pictures."""
    if rng.random() < 0.3:
        image = image.convert("L")
    if rng.random() < 0.4:
        buffer = io.BytesIO()
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
            buffer, format="JPEG", quality=int(rng.integers(60, 96))
        )
        buffer.seek(0)
        image = Image.open(buffer)
        image.load()
    return image


def _crop_resize(photo: Image.Image, rng: Generator) -> Image.Image:
    """A random crop of a photo (10–100 % of each side), resized to a random size."""
    width, height = photo.size
    crop_w = int(width * rng.uniform(0.1, 1.0))
    crop_h = int(height * rng.uniform(0.1, 1.0))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    crop = photo.crop((left, top, left + crop_w, top + crop_h))
    return crop.resize(_size(rng), Image.Resampling.BILINEAR)


@functools.cache
def _font_path(name: str) -> str:
    import matplotlib  # ships the DejaVu fonts, so no system font is needed

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name)


def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(_font_path(name), size)


SANS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf")
WORDS = (
    *("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "attention", "model", "image"),
    *("upload", "result", "score", "total", "page", "settings", "account", "profile", "search"),
    *("submit", "cancel", "invoice", "report", "weather", "news", "March", "Friday"),
)


def _text(rng: Generator, words: int) -> str:
    return " ".join(str(rng.choice(WORDS)) for _ in range(words))


# ---------------------------------------------------------------- development families


@functools.cache
def _sklearn_photos() -> tuple[Image.Image, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(Image.fromarray(array) for array in load_sample_images().images)


def sklearn_photo(rng: Generator) -> Image.Image:
    """A crop of scikit-learn's sample photos (a temple in China, a flower), resized."""
    photos = _sklearn_photos()
    return _finish(_crop_resize(photos[int(rng.integers(len(photos)))], rng), rng)


def texture(rng: Generator) -> Image.Image:
    """Procedural textures: multi-scale smoothed noise, marble and wood veins, woven stripes."""
    width, height = _size(rng)
    kind = int(rng.integers(4))
    from scipy.ndimage import gaussian_filter

    base = rng.normal(size=(height, width)).astype(np.float32)
    noise = sum(gaussian_filter(base, sigma) * sigma for sigma in (1.0, 3.0, 8.0))
    noise = (noise - noise.mean()) / (noise.std() + 1e-6)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    period = rng.uniform(6, 40)
    if kind == 0:
        field = noise
    elif kind == 1:
        field = np.sin(xs / period * 2 * np.pi + 3 * noise)
    elif kind == 2:
        field = np.sin(np.hypot(xs - width / 2, ys - height / 2) / period * 2 * np.pi + 2 * noise)
    else:
        field = np.sin(xs / period * 6) * np.sin(ys / period * 6) + 0.3 * noise
    field = (field - field.min()) / (np.ptp(field) + 1e-6)
    low, high = np.array(_color(rng), np.float32), np.array(_color(rng), np.float32)
    rgb = low + field[..., None] * (high - low)
    return _finish(Image.fromarray(rgb.clip(0, 255).astype(np.uint8)), rng)


def noise(rng: Generator) -> Image.Image:
    """Pixel noise: uniform, Gaussian around a grey level, salt and pepper, or colour."""
    width, height = _size(rng)
    kind = int(rng.integers(4))
    if kind == 0:
        array = rng.integers(0, 256, (height, width), dtype=np.uint8)
    elif kind == 1:
        array = rng.normal(rng.uniform(40, 215), rng.uniform(10, 60), (height, width)).clip(0, 255)
    elif kind == 2:
        array = np.where(rng.random((height, width)) < rng.uniform(0.05, 0.5), 255, 0)
    else:
        array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return _finish(Image.fromarray(array.astype(np.uint8)), rng)


def gradient(rng: Generator) -> Image.Image:
    """Linear or radial gradients between two colours, and flat colours."""
    width, height = _size(rng)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = int(rng.integers(3))
    if kind == 0:
        angle = rng.uniform(0, 2 * np.pi)
        field = xs * np.cos(angle) + ys * np.sin(angle)
    elif kind == 1:
        field = np.hypot(xs - rng.uniform(0, width), ys - rng.uniform(0, height))
    else:
        field = np.zeros_like(xs)
    field = (field - field.min()) / (np.ptp(field) + 1e-6)
    low, high = np.array(_color(rng), np.float32), np.array(_color(rng), np.float32)
    return _finish(Image.fromarray((low + field[..., None] * (high - low)).astype(np.uint8)), rng)


def shapes(rng: Generator) -> Image.Image:
    """Circles, rectangles, polygons and lines, filled or outlined, on a plain background."""
    width, height = _size(rng)
    image = Image.new("RGB", (width, height), _color(rng))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 8))):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        x1, y1 = max(x1, x0 + 3), max(y1, y0 + 3)
        fill = _color(rng) if rng.random() < 0.6 else None
        line = int(rng.integers(1, 6))
        kind = int(rng.integers(4))
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=fill, outline=_color(rng), width=line)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=fill, outline=_color(rng), width=line)
        elif kind == 2:
            points = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(5)]
            draw.polygon(points, fill=fill, outline=_color(rng))
        else:
            draw.line((x0, y0, x1, y1), fill=_color(rng), width=line)
    return _finish(image, rng)


def _figure_image(figure: object, rng: Generator) -> Image.Image:
    from matplotlib.figure import Figure

    assert isinstance(figure, Figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=int(rng.integers(40, 110)))
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB")
    return image


def chart(rng: Generator, styles: tuple[str, ...] = ("default", "seaborn-v0_8-whitegrid")) -> Image.Image:
    """Line, bar, scatter, histogram and pie charts drawn by matplotlib (Agg, no display)."""
    import matplotlib.style
    from matplotlib.figure import Figure

    with matplotlib.style.context(str(rng.choice(styles))):
        figure = Figure(figsize=(rng.uniform(2, 7), rng.uniform(1.5, 5)))
        axes = figure.add_subplot()
        kind = int(rng.integers(5))
        x = np.arange(int(rng.integers(5, 60)))
        if kind == 0:
            for _ in range(int(rng.integers(1, 4))):
                axes.plot(x, np.cumsum(rng.normal(size=len(x))))
        elif kind == 1:
            axes.bar([str(i) for i in range(min(len(x), 12))], rng.uniform(1, 10, min(len(x), 12)))
        elif kind == 2:
            axes.scatter(rng.normal(size=len(x) * 3), rng.normal(size=len(x) * 3), s=rng.uniform(2, 30))
        elif kind == 3:
            axes.hist(rng.normal(size=500), bins=int(rng.integers(8, 40)))
        else:
            axes.pie(rng.uniform(1, 5, int(rng.integers(2, 7))))
        if rng.random() < 0.5:
            axes.set_title(_text(rng, 3))
        image = _figure_image(figure, rng)
    return _finish(image, rng)


def text(rng: Generator, fonts: tuple[str, ...] = SANS) -> Image.Image:
    """Lines of words, dark on light or light on dark, in a random size."""
    width, height = _size(rng, 60, 500)
    dark_on_light = rng.random() < 0.6
    background, ink = ((255, 255, 255), (0, 0, 0)) if dark_on_light else ((0, 0, 0), (255, 255, 255))
    if rng.random() < 0.3:
        background, ink = _color(rng), _color(rng)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    size = int(rng.integers(8, 40))
    font = _font(str(rng.choice(fonts)), size)
    y = int(rng.integers(0, size))
    while y < height:
        draw.text((int(rng.integers(0, 20)), y), _text(rng, 8), fill=ink, font=font)
        y += int(size * rng.uniform(1.2, 2.0))
    return _finish(image, rng)


LETTERS = "ABCDEFGHJKLMNPQRTUVWXYZabdefghkmnpqrtuwxyz#%&@?"  # no O/I/S/l/o/s: they read as 0/1/5


def letters(rng: Generator, fonts: tuple[str, ...] = SANS) -> Image.Image:
    """One to three letters or symbols, in the MNIST polarity or its inverse, at digit-like sizes."""
    width, height = _size(rng, 40, 200)
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    size = int(min(width, height) * rng.uniform(0.3, 0.8))
    font = _font(str(rng.choice(fonts)), max(size, 8))
    glyphs = "".join(str(rng.choice(list(LETTERS))) for _ in range(int(rng.integers(1, 4))))
    corner = (int(rng.integers(0, width // 3 + 1)), int(rng.integers(0, height // 3 + 1)))
    draw.text(corner, glyphs, 255, font)
    if rng.random() < 0.5:
        image = Image.fromarray(255 - np.asarray(image))
    return _finish(image, rng)


# ---------------------------------------------------------------- held-out families


def _sample_data(name: str) -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / name


@functools.cache
def _matplotlib_pictures() -> tuple[Image.Image, ...]:
    """matplotlib's sample pictures: Grace Hopper's portrait, a photo of a gift pack, an MRI slice and two
    terrain models shaded as grey images."""
    pictures = [
        Image.open(_sample_data("grace_hopper.jpg")).convert("RGB"),
        Image.open(_sample_data("Minduka_Present_Blue_Pack.png")).convert("RGB"),
    ]
    import gzip

    with gzip.open(_sample_data("s1045.ima.gz")) as handle:
        mri = np.frombuffer(handle.read(), np.uint16).reshape(256, 256)
    pictures.append(Image.fromarray((mri / max(mri.max(), 1) * 255).astype(np.uint8)))
    for name, key in (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo")):
        with zipfile.ZipFile(_sample_data(name)) as archive, archive.open(f"{key}.npy") as array:
            terrain = np.lib.format.read_array(array, allow_pickle=False).astype(np.float64)
        terrain = (terrain - terrain.min()) / (np.ptp(terrain) + 1e-9) * 255
        pictures.append(Image.fromarray(terrain.astype(np.uint8)))
    return tuple(pictures)


def matplotlib_picture(rng: Generator) -> Image.Image:
    """A crop of matplotlib's sample photos, scan and terrain models, resized."""
    pictures = _matplotlib_pictures()
    return _finish(_crop_resize(pictures[int(rng.integers(len(pictures)))], rng), rng)


def styled_chart(rng: Generator) -> Image.Image:
    """Charts in styles the development set lacks: dark background, ggplot, and colour-mapped heatmaps."""
    if rng.random() < 0.3:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(rng.uniform(2, 6), rng.uniform(2, 5)))
        axes = figure.add_subplot()
        cmap = str(rng.choice(["viridis", "magma", "gray", "coolwarm"]))
        axes.imshow(rng.normal(size=(int(rng.integers(5, 40)), int(rng.integers(5, 40)))), cmap=cmap)
        return _finish(_figure_image(figure, rng), rng)
    return chart(rng, styles=("dark_background", "ggplot", "fivethirtyeight", "grayscale"))


def screenshot(rng: Generator) -> Image.Image:
    """A user-interface mock-up: window, title bar, buttons, input fields and labels."""
    width, height = _size(rng, 120, 600)
    dark = rng.random() < 0.3
    background = (32, 33, 36) if dark else (245, 245, 245)
    ink = (230, 230, 230) if dark else (30, 30, 30)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    font = _font(str(rng.choice(["DejaVuSansMono.ttf", "DejaVuSerif.ttf"])), int(rng.integers(9, 18)))
    bar = int(rng.integers(18, 36))
    draw.rectangle((0, 0, width, bar), fill=_color(rng))
    draw.text((8, bar // 4), _text(rng, 3), fill=(255, 255, 255), font=font)
    y = bar + 10
    while y < height - 20:
        kind = int(rng.integers(3))
        if kind == 0:
            draw.rounded_rectangle((10, y, 10 + int(width * 0.3), y + 22), 5, fill=_color(rng))
            draw.text((16, y + 4), _text(rng, 1), fill=(255, 255, 255), font=font)
        elif kind == 1:
            draw.rectangle((10, y, width - 10, y + 22), outline=ink, fill=background)
            draw.text((16, y + 4), _text(rng, 2), fill=ink, font=font)
        else:
            draw.text((10, y), _text(rng, 6), fill=ink, font=font)
        y += int(rng.integers(26, 40))
    return _finish(image, rng)


def serif_text(rng: Generator) -> Image.Image:
    """Text in the fonts the development set lacks: serif and monospace."""
    fonts = ("DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSerif-Bold.ttf")
    return letters(rng, fonts) if rng.random() < 0.4 else text(rng, fonts)


DEVELOPMENT_FAMILIES: dict[str, Family] = {
    "photo (scikit-learn)": sklearn_photo,
    "texture": texture,
    "noise": noise,
    "gradient": gradient,
    "shapes": shapes,
    "chart": chart,
    "text": text,
    "letters": letters,
}
HELD_OUT_FAMILIES: dict[str, Family] = {
    "photo, scan, terrain (matplotlib)": matplotlib_picture,
    "chart, other styles": styled_chart,
    "screenshot": screenshot,
    "serif and mono text, letters": serif_text,
}


def render(families: dict[str, Family], per_family: int, seed: int) -> dict[str, list[Image.Image]]:
    """``per_family`` images of each family, deterministic in ``seed``."""
    rendered = {}
    for index, (name, family) in enumerate(families.items()):
        rng = np.random.default_rng([seed, index])
        rendered[name] = [family(rng) for _ in range(per_family)]
    return rendered
