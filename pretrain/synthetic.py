"""Seeded synthetic scenes: shapes of several classes on textured backgrounds.

One generator serves every place that needs data without a dataset: the
pretraining default (images only), and the demo's COCO-format detection set and
semantic-segmentation set (instance masks and a label map come with each image).
The class is the shape; an object's colour is drawn at random, so recognising a
class needs its outline. Objects are painted in shaded flat colours over textured
backgrounds (gradients, stripes, checks), so where an object is can be seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

CLASSES: Tuple[str, ...] = ("disc", "square", "triangle", "ring", "cross")


@dataclass
class Instance:
    category: int  # index into CLASSES
    mask: np.ndarray  # [H, W] bool, visible part (after occlusion)


@dataclass
class Scene:
    image: np.ndarray  # [H, W, 3] uint8
    instances: List[Instance]

    @property
    def semantic(self) -> np.ndarray:
        """[H, W] uint8 label map: 0 background, 1 + class index for objects."""
        label = np.zeros(self.image.shape[:2], np.uint8)
        for inst in self.instances:
            label[inst.mask] = inst.category + 1
        return label


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random float texture in [0, 1], [H, W, 3]: gradient, stripes or checks, plus noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0.1, 0.9, size=3).astype(np.float32)
    other = rng.uniform(0.1, 0.9, size=3).astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:  # linear gradient
        theta = rng.uniform(0, np.pi)
        t = (np.cos(theta) * xx + np.sin(theta) * yy) / max(h, w)
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
    elif kind == 1:  # stripes
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(4, 16)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(theta) * xx + np.sin(theta) * yy) / period)
    else:  # checks
        cell = int(rng.integers(3, 10))
        t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    tex = base * (1 - t[..., None]) + other * t[..., None]
    tex += rng.normal(0, 0.04, size=tex.shape).astype(np.float32)
    return np.clip(tex, 0, 1)


def _fill(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An object's paint: one colour with gentle shading and noise, so that objects stand out
    from textured backgrounds by their surface and are told apart by their outline."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    colour = rng.uniform(0.05, 0.95, size=3).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    shade = 0.15 * (np.cos(theta) * xx + np.sin(theta) * yy) / max(h, w)
    paint = colour + shade[..., None] + rng.normal(0, 0.02, size=(h, w, 3)).astype(np.float32)
    return np.clip(paint, 0, 1)


def _shape_mask(rng: np.random.Generator, category: int, h: int, w: int) -> np.ndarray:
    size = rng.uniform(0.3, 0.6) * min(h, w)
    cx, cy = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
    r = size / 2
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    name = CLASSES[category]
    if name == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif name == "square":
        a = rng.uniform(0, np.pi / 2)
        pts = [(cx + r * np.cos(a + k * np.pi / 2), cy + r * np.sin(a + k * np.pi / 2)) for k in range(4)]
        draw.polygon(pts, fill=1)
    elif name == "triangle":
        a = rng.uniform(0, 2 * np.pi)
        pts = [(cx + r * np.cos(a + k * 2 * np.pi / 3), cy + r * np.sin(a + k * 2 * np.pi / 3)) for k in range(3)]
        draw.polygon(pts, fill=1)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        ri = r * 0.55
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif name == "cross":
        t = r * 0.35
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=1)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=1)
    return np.asarray(img, dtype=bool)


def render_scene(
    rng: np.random.Generator, size: Tuple[int, int] = (128, 128), max_objects: int = 3, min_pixels: int = 16
) -> Scene:
    """One scene of 1..max_objects objects; later objects occlude earlier ones.

    Instances whose visible part falls under ``min_pixels`` are dropped (and
    their pixels stay painted, as an unlabelled distractor would be).
    """
    h, w = size
    canvas = _texture(rng, h, w)
    instances: List[Instance] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        category = int(rng.integers(len(CLASSES)))
        mask = _shape_mask(rng, category, h, w)
        canvas[mask] = _fill(rng, h, w)[mask]
        for inst in instances:
            inst.mask &= ~mask
        instances.append(Instance(category, mask))
    instances = [i for i in instances if i.mask.sum() >= min_pixels]
    return Scene((canvas * 255).round().astype(np.uint8), instances)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for scene ``index`` of a set: independent of how many are drawn."""
    return np.random.default_rng([seed, index])


# ------------------------------------------------------------------ writers
def mask_to_polygons(mask: np.ndarray, min_area: float = 4.0) -> List[List[float]]:
    """COCO polygons [[x1, y1, x2, y2, ...], ...] of a binary mask's outer contours."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) >= 3 and cv2.contourArea(c) >= min_area:
            # Pixel centres -> COCO's continuous coordinates (a pixel spans [x, x+1]).
            polys.append((c.reshape(-1, 2).astype(np.float64) + 0.5).flatten().round(2).tolist())
    return polys


def write_coco_dataset(root, split: str, n: int, size: Tuple[int, int] = (128, 128), seed: int = 0,
                       max_objects: int = 3) -> Tuple[str, str]:
    """Write ``root/<split>/*.png`` and ``root/annotations/instances_<split>.json`` (COCO format).

    Category ids start at 1 in CLASSES order; masks are polygons (iscrowd 0).
    Returns (json path, image folder).
    """
    import json
    from pathlib import Path

    root = Path(root)
    img_dir, ann_dir = root / split, root / "annotations"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        scene = render_scene(scene_rng(seed, i), size, max_objects=max_objects)
        name = f"{split}_{i:05d}.png"
        Image.fromarray(scene.image).save(img_dir / name)
        images.append({"id": i + 1, "file_name": name, "height": size[0], "width": size[1]})
        for inst in scene.instances:
            polys = mask_to_polygons(inst.mask)
            if not polys:
                continue
            ys, xs = np.nonzero(inst.mask)
            x0, y0 = float(xs.min()), float(ys.min())
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": inst.category + 1,
                "segmentation": polys, "area": float(inst.mask.sum()), "iscrowd": 0,
                "bbox": [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0],
            })
    categories = [{"id": c + 1, "name": name, "supercategory": "shape"} for c, name in enumerate(CLASSES)]
    ann_path = ann_dir / f"instances_{split}.json"
    ann_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(ann_path), str(img_dir)


def write_segmentation_dataset(root, split: str, n: int, size: Tuple[int, int] = (128, 128), seed: int = 0,
                               max_objects: int = 3) -> Tuple[str, str]:
    """Write ``root/images/<split>/*.png`` and ``root/labels/<split>/*.png`` (label PNGs) and
    ``root/classes.txt`` (one name a line; label value = line index: 0 background).
    Returns (image folder, label folder)."""
    from pathlib import Path

    root = Path(root)
    img_dir, lbl_dir = root / "images" / split, root / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        scene = render_scene(scene_rng(seed, i), size, max_objects=max_objects)
        Image.fromarray(scene.image).save(img_dir / f"{split}_{i:05d}.png")
        Image.fromarray(scene.semantic).save(lbl_dir / f"{split}_{i:05d}.png")
    (root / "classes.txt").write_text("\n".join(("background",) + CLASSES) + "\n")
    return str(img_dir), str(lbl_dir)
