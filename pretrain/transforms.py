"""The augmentations in two parts: what the data loader does on uint8, and what runs on the device.

A sample transform takes an image (``pretrain.images``: a file's bytes or a decoded array) and
returns uint8 tensors, plus the per-sample parameters of any augmentation that it leaves to the
device. Every random number is drawn in the loader, from torch's generator in the order the
authors' torchvision pipelines draw them (``RandomResizedCrop.get_params``, ``RandomApply``,
``ColorJitter.get_params``, ...), so the per-sample seed (``pretrain.data.SeededSample``) fixes a
sample's augmentation whatever runs it: a resumed run sees the same crops on any backend.

Its ``device_transform(inputs, device)`` takes the collated batch, moves it to the device and
returns what the model sees: float32, normalised, as ToTensor + Normalize (``ToFloatNormalized``,
bit for bit the same arithmetic), after MoCo's colour augmentations where they run there
(``ColourAugment``: batched on a CUDA device; in the loader for a CPU one, where the workers
run beside the training step).
"""
from __future__ import annotations

import functools

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision import transforms as T

from .images import Box, decode_crop, resize_uint8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's aspect-ratio range


def shape_only(height: int, width: int) -> torch.Tensor:
    """A [3, H, W] tensor with no storage behind it: what crop samplers read the size from."""
    return torch.empty(1, 1, 1).expand(3, height, width)


@dataclass(frozen=True)
class TorchvisionCrop:
    """Crop boxes as torchvision's RandomResizedCrop draws them (torch's generator): the pretraining crops. A class,
    not a closure, so that a transform holding one pickles (processes a fork server starts: pretrain.dali)."""
    scale: Tuple[float, float]
    ratio: Tuple[float, float] = RATIO

    def __call__(self, h: int, w: int) -> Box:
        return tuple(T.RandomResizedCrop.get_params(shape_only(h, w), list(self.scale), list(self.ratio)))


def torchvision_crop(scale: Tuple[float, float], ratio=RATIO) -> Callable[[int, int], Box]:
    """``TorchvisionCrop`` of ``scale`` and ``ratio``."""
    return TorchvisionCrop(tuple(scale), tuple(ratio))


# ------------------------------------------------------------------ plans
@dataclass
class ViewPlan:
    """One output image: ``box`` of the source resized to ``size``, then ``crop`` (top, left, h, w) of that,
    then mirrored if ``flip``. Carried out on the CPU by ``run_views``, on the GPU by the DALI backend."""
    box: Box
    size: Tuple[int, int]
    interpolation: str
    flip: bool = False
    crop: Optional[Box] = None


def run_views(img, plans: Sequence[ViewPlan]) -> List[torch.Tensor]:
    """The views as uint8 [3, h, w], from one decode (of the region they read, at the smallest scale that
    every view allows)."""
    out = []
    for p, x in zip(plans, decode_crop(img, [p.box for p in plans], [p.size for p in plans])):
        x = resize_uint8(x, p.size, p.interpolation)
        if p.crop is not None:
            top, left, h, w = p.crop
            x = x[:, top:top + h, left:left + w]
        out.append(x.flip(-1) if p.flip else x)
    return out


# ------------------------------------------------------- device transforms
class ToFloatNormalized:
    """uint8 [..., 3, H, W] -> float32 (x / 255 - mean) / std on ``device``: ToTensor + Normalize after the transfer."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean, self.std = mean, std

    def __call__(self, pixels: torch.Tensor, device) -> torch.Tensor:
        return self.normalize(to_unit_float(pixels, device))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = _on_device(tuple(self.mean), x.device), _on_device(tuple(self.std), x.device)
        return x.sub_(mean.view(3, 1, 1)).div_(std.view(3, 1, 1))


@functools.lru_cache(maxsize=None)
def _on_device(values: tuple, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """A constant's tensor on ``device``, made once: a fresh ``torch.tensor(..., device=cuda)`` per batch is a
    copy from pageable host memory, which makes the host wait for the GPU's queue every call."""
    return torch.tensor(values, device=device, dtype=dtype)


def to_unit_float(pixels: torch.Tensor, device) -> torch.Tensor:
    """uint8 -> float32 in [0, 1] on ``device`` (ToTensor's arithmetic)."""
    return pixels.to(device, non_blocking=True).float().div_(255)


# ------------------------------------------------------------ transforms
class SampleTransform:
    """An augmentation as the loader runs it: ``plan`` draws every random number for an image of size
    (h, w) and returns its views' plans and any parameters left to the device; the views are cut on
    uint8 (``run_views``, or the DALI backend on the GPU); ``assemble`` makes the sample of them.
    ``device_transform(inputs, device)`` finishes the collated batch on the device."""

    device_transform: Callable
    # What ``assemble`` still does on the host after the views are cut (None: nothing): a GPU decoder
    # (the DALI backend) takes only transforms that leave it nothing.
    host_work: Optional[str] = None

    def plan(self, hw) -> Tuple[List[ViewPlan], Optional[torch.Tensor]]:
        raise NotImplementedError

    def assemble(self, views: List[torch.Tensor], params: Optional[torch.Tensor]):
        return views[0]

    def __call__(self, img):
        views, params = self.plan(img.size)
        return self.assemble(run_views(img, views), params)


class RandomResizedCropFlip(SampleTransform):
    """RandomResizedCrop + RandomHorizontalFlip, on uint8 (MAE pretraining, the linear protocols).

    ``crop_box(h, w)`` draws the box (torchvision's or timm's sampler); the flip is drawn after it
    with torch's generator, as RandomHorizontalFlip."""

    def __init__(self, size: int, crop_box: Callable[[int, int], Box], interpolation: str, flip_p: float = 0.5):
        self.size, self.crop_box, self.interpolation, self.flip_p = (size, size), crop_box, interpolation, flip_p
        self.device_transform = ToFloatNormalized()

    def plan(self, hw):
        box = self.crop_box(*hw)
        return [ViewPlan(box, self.size, self.interpolation, flip=bool(torch.rand(1) < self.flip_p))], None


class FixedCrop(SampleTransform):
    """The image resized (shorter side ``resize``), then a ``size`` crop of it: at a random place with a
    random flip (``random``), or the centre without a flip. MAE's Table 1e: crop_fixed and none."""

    def __init__(self, size: int, resize: int, interpolation: str, random: bool):
        self.size, self.resize, self.interpolation, self.random = size, resize, interpolation, random
        self.device_transform = ToFloatNormalized()

    def plan(self, hw):
        h, w = hw
        scale = self.resize / min(h, w)
        rh, rw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        if self.random:
            top, left = (int(torch.randint(0, d - self.size + 1, (1,))) for d in (rh, rw))
            flip = bool(torch.rand(1) < 0.5)
        else:
            top, left, flip = (rh - self.size) // 2, (rw - self.size) // 2, False
        crop = (top, left, self.size, self.size)
        return [ViewPlan((0, 0, h, w), (rh, rw), self.interpolation, flip=flip, crop=crop)], None


class RandomResizedCropFlipColour(RandomResizedCropFlip):
    """RandomResizedCropFlip, then a colour jitter (``recipe``) on the host, rounded back to uint8."""

    host_work = "the colour jitter (in the loader)"

    def __init__(self, size: int, crop_box, interpolation: str, recipe: "ColourRecipe"):
        super().__init__(size, crop_box, interpolation)
        self.recipe, self.jitter = recipe, T.ColorJitter(*recipe.jitter)
        self.colour = ColourAugment(recipe.gray_first, blur_kernel_size(size))

    def plan(self, hw):
        views, _ = super().plan(hw)
        return views, TwoViews._draw_colour(self.recipe, self.jitter)[None]

    def assemble(self, views, params):
        out = self.colour(views[0][None].float().div_(255), params)
        return out.mul_(255).round_().to(torch.uint8)[0]


MAE_AUGMENTATIONS = ("none", "crop_fixed", "crop_rand", "crop_color")


def mae_transform(img_size: int = 224, min_scale: float = 0.2, augmentation: str = "crop_rand") -> SampleTransform:
    """MAE pretraining: RandomResizedCrop(scale=(min_scale, 1), bicubic) + horizontal flip only (crop_rand,
    the paper's), or one of its Table 1e alternatives: none (resize to img_size / 0.875, centre crop),
    crop_fixed (the same resize, a random img_size crop, flip), crop_color (crop_rand, then
    ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8, as MoCo v2's)."""
    if augmentation == "crop_rand":
        return RandomResizedCropFlip(img_size, torchvision_crop((min_scale, 1.0)), "bicubic")
    if augmentation in ("none", "crop_fixed"):
        return FixedCrop(img_size, round(img_size / 0.875), "bicubic", random=augmentation == "crop_fixed")
    if augmentation == "crop_color":
        return RandomResizedCropFlipColour(img_size, torchvision_crop((min_scale, 1.0)), "bicubic",
                                           ColourRecipe((0.4, 0.4, 0.4, 0.1), 0.8, gray_p=0.0))
    raise ValueError(f"MAE augmentation must be one of {', '.join(MAE_AUGMENTATIONS)}, got {augmentation!r}")


# ------------------------------------------------------- two-view methods
# Columns of a view's colour parameters (float32 [COLOUR_PARAMS]); FACTORS: brightness, contrast, saturation, hue.
JITTER, ORDER, FACTORS, GRAY, SIGMA, SOLARIZE = 0, slice(1, 5), slice(5, 9), 9, 10, 11
COLOUR_PARAMS = 12


def blur_kernel_size(img_size: int) -> int:
    # ~10% of the image (23 px at 224), as SimCLR / MoCo v2.
    return max(3, int(0.1 * img_size) // 2 * 2 + 1)


@dataclass(frozen=True)
class ColourRecipe:
    """One view's colour augmentations, drawn and applied in this order (the authors' torchvision pipelines):
    ``RandomApply(ColorJitter(*jitter), p=jitter_p)`` (``jitter_p=None``: always, without a draw), then
    ``RandomGrayscale(gray_p)`` (``gray_first``: before the jitter, as InstDisc / MoCo v1), then
    ``RandomApply(GaussianBlur(sigma in [0.1, 2]), p=blur_p)``, then ``RandomApply(Solarize, p=solarize_p)``
    (PIL's, threshold 128). A probability of 0 means the step is not in the pipeline (no draw)."""

    jitter: Tuple[float, float, float, float]
    jitter_p: Optional[float]
    gray_p: float = 0.2
    gray_first: bool = False
    blur_p: float = 0.0
    solarize_p: float = 0.0


MOCO_V1 = ColourRecipe((0.4, 0.4, 0.4, 0.4), None, gray_first=True)
MOCO_V2 = ColourRecipe((0.4, 0.4, 0.4, 0.1), 0.8, blur_p=0.5)  # "aug+"


class TwoViews(SampleTransform):
    """Two augmented views of one image, decoded once (MoCo's query and key; BYOL-style asymmetric pairs):
    per view, RandomResizedCrop(scale=(min_scale, 1)), its ``ColourRecipe``, horizontal flip. Crops and flips
    are cut here on uint8; the colour parameters are drawn here, in the authors' order, and the colour
    augmentations run batched on the device (``colour_on_device``) or here, rounded back to uint8 as the PIL
    pipeline's are.
    """

    def __init__(self, recipes: Tuple[ColourRecipe, ColourRecipe], img_size: int = 224, min_scale: float = 0.2,
                 colour_on_device: bool = False, interpolation: str = "bilinear"):
        if len({r.gray_first for r in recipes}) != 1:
            raise ValueError("both views must convert to grayscale at the same point (gray_first)")
        self.recipes, self.size, self.colour_on_device = tuple(recipes), (img_size, img_size), colour_on_device
        self.interpolation = interpolation
        self.crop_box = torchvision_crop((min_scale, 1.0))
        self.jitters = [T.ColorJitter(*r.jitter) for r in self.recipes]  # for their ranges
        self.colour = ColourAugment(recipes[0].gray_first, blur_kernel_size(img_size))
        self.device_transform = MoCoDeviceTransform(self.colour) if colour_on_device else ToFloatNormalized()

    def plan(self, hw):
        views, params = [], []
        for recipe, jitter in zip(self.recipes, self.jitters):
            box = self.crop_box(*hw)
            params.append(self._draw_colour(recipe, jitter))
            views.append(ViewPlan(box, self.size, self.interpolation, flip=bool(torch.rand(1) < 0.5)))
        return views, torch.stack(params)

    @staticmethod
    def _draw_colour(r: ColourRecipe, jitter: T.ColorJitter) -> torch.Tensor:
        p = torch.zeros(COLOUR_PARAMS)
        if r.gray_first:
            p[GRAY] = float(torch.rand(1) < r.gray_p)
        if r.jitter_p is None or not r.jitter_p < torch.rand(1):  # RandomApply(p) skips when p < rand
            order, *factors = T.ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation,
                                                       jitter.hue)
            p[JITTER], p[ORDER], p[FACTORS] = 1.0, order.float(), torch.tensor(factors)
        if not r.gray_first:
            p[GRAY] = float(torch.rand(1) < r.gray_p)
        if r.blur_p > 0 and not r.blur_p < torch.rand(1):
            p[SIGMA] = T.GaussianBlur.get_params(0.1, 2.0)
        if r.solarize_p > 0 and not r.solarize_p < torch.rand(1):
            p[SOLARIZE] = 1.0
        return p

    @property
    def host_work(self) -> Optional[str]:
        return None if self.colour_on_device else "the colour augmentations (in the loader, for a CPU device)"

    def assemble(self, views, params):
        pixels = torch.stack(views)
        if self.colour_on_device:
            return pixels, params
        out = self.colour(pixels.float().div_(255), params)
        return out.mul_(255).round_().to(torch.uint8)


def moco_transform(version: str = "v2", img_size: int = 224, min_scale: float = 0.2,
                   colour_on_device: bool = False) -> TwoViews:
    """MoCo's two views: v1 (InstDisc): RandomResizedCrop, RandomGrayscale(0.2), ColorJitter(0.4, 0.4, 0.4, 0.4),
    flip; v2 ("aug+"): crop, RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8), RandomGrayscale(0.2),
    RandomApply(GaussianBlur, p=0.5), flip. Bilinear crops."""
    recipes = {"v1": MOCO_V1, "v2": MOCO_V2}
    if version not in recipes:
        raise ValueError(f"MoCo augmentation must be v1 or v2, got {version!r}")
    return TwoViews((recipes[version],) * 2, img_size, min_scale, colour_on_device)


class MoCoDeviceTransform:
    """(uint8 [N, 2, 3, H, W], colour parameters [N, 2, P]) -> the normalised views, colour-augmented on the device."""

    def __init__(self, colour: "ColourAugment"):
        self.colour, self.normalize = colour, ToFloatNormalized().normalize

    def __call__(self, inputs, device):
        pixels, params = inputs
        x = self.colour(to_unit_float(pixels.flatten(0, 1), device), params.flatten(0, 1))
        return self.normalize(x).unflatten(0, pixels.shape[:2])


class ColourAugment:
    """The colour augmentations of ``ColourRecipe``, batched, on float images in [0, 1] with per-sample parameters.

    The formulas of torchvision's tensor ops (``adjust_brightness / contrast / saturation / hue``,
    ``rgb_to_grayscale``, ``gaussian_blur``: reflect padding, kernel ``blur_kernel``) and PIL's solarize
    (threshold 128 / 255), applied per sample: jitter in each sample's own order, grayscale after it (before
    it with ``gray_first``), blur, solarize. Which samples each operation touches is read from the parameters
    on the CPU, so that nothing waits for the device.
    """

    def __init__(self, gray_first: bool, blur_kernel: int):
        self.gray_first, self.blur_kernel = gray_first, blur_kernel

    def __call__(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        params = params.cpu()
        if self.gray_first:
            x = self._gray(x, params)
        x = self._jitter(x, params)
        if not self.gray_first:
            x = self._gray(x, params)
        x = self._blur(x, params)
        return self._solarize(x, params)

    @staticmethod
    def _rows(mask: torch.Tensor, device) -> Optional[torch.Tensor]:
        rows = mask.nonzero().flatten()
        return rows.to(device, non_blocking=True) if len(rows) else None

    def _jitter(self, x, params):
        order, factors = params[:, ORDER].long(), params[:, FACTORS]
        applied = params[:, JITTER] > 0
        for position in range(4):
            for op in range(4):
                mask = applied & (order[:, position] == op)
                rows = self._rows(mask, x.device)
                if rows is not None:
                    factor = factors[mask, op].to(x.device, non_blocking=True).view(-1, 1, 1, 1)
                    x[rows] = JITTER_OPS[op](x[rows], factor)
        return x

    def _gray(self, x, params):
        rows = self._rows(params[:, GRAY] > 0, x.device)
        if rows is not None:
            x[rows] = grayscale(x[rows]).expand(-1, 3, -1, -1)
        return x

    def _blur(self, x, params):
        mask = params[:, SIGMA] > 0
        rows = self._rows(mask, x.device)
        if rows is not None:
            x[rows] = gaussian_blur(x[rows], params[mask, SIGMA].to(x.device, non_blocking=True), self.blur_kernel)
        return x

    def _solarize(self, x, params):
        rows = self._rows(params[:, SOLARIZE] > 0, x.device)
        if rows is not None:
            y = x[rows]
            x[rows] = torch.where(y >= 128 / 255, 1.0 - y, y)  # PIL: 255 - v for v >= 128
        return x


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 1, H, W], torchvision's (ITU-R 601-2) weights."""
    r, g, b = x.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def _blend(a, b, ratio):
    out = ratio * a  # torchvision's ratio * a + (1 - ratio) * b, in its order, with one temporary less
    out += (1.0 - ratio) * b
    return out.clamp_(0.0, 1.0)


def adjust_brightness(x, factor):
    return (x * factor).clamp_(0.0, 1.0)  # _blend(x, zeros, factor), whose second term is exactly 0


def adjust_contrast(x, factor):
    return _blend(x, grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(x, factor):
    return _blend(x, grayscale(x), factor)


def adjust_hue(x, factor):
    """Rotate the hue by ``factor`` (a fraction of the circle): RGB -> HSV, shift, -> RGB."""
    r, g, b = x.unbind(dim=-3)
    maxc, minc = x.amax(dim=-3), x.amin(dim=-3)
    equal = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(equal, ones, maxc)
    divisor = torch.where(equal, ones, chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    h = ((maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
         + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    h = (h + factor.view(-1, 1, 1)) % 1.0
    # HSV -> RGB: torchvision's sector table (v, q, p, p, t, v / t, v, v, q, p, p / p, p, t, v, v, q), gathered.
    v = maxc
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    sector = (i.to(torch.int64) % 6).unsqueeze(-3)  # [N, 1, H, W]
    p = (v * (1.0 - s)).clamp_(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp_(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp_(0.0, 1.0)
    values = torch.stack((v, q, p, t), dim=-3)  # [N, 4, H, W]
    table = _on_device(((0, 1, 2, 2, 3, 0), (3, 0, 0, 1, 2, 2), (2, 2, 3, 0, 0, 1)), x.device, torch.int64)
    return torch.cat([values.gather(-3, table[c][sector]) for c in range(3)], dim=-3)


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # ColorJitter's fn_idx order


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """[N, 3, H, W] blurred with a Gaussian of each sample's ``sigma`` (separable; reflect padding)."""
    n, c = x.shape[:2]
    half = (kernel_size - 1) * 0.5
    offsets = torch.linspace(-half, half, kernel_size, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [N * C, K]
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, n * c, *x.shape[2:]), [pad, pad, pad, pad], mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    return y.view_as(x)


# ------------------------------------------------------------ evaluation
class ResizeCenterCrop(SampleTransform):
    """Resize the short side to floor(img_size / crop_pct), centre-crop img_size (the evaluation transform)."""

    def __init__(self, img_size: int = 224, crop_pct: float = 0.875, interpolation: str = "bicubic"):
        self.img_size, self.resize_to, self.interpolation = img_size, int(math.floor(img_size / crop_pct)), interpolation
        self.device_transform = ToFloatNormalized()

    def plan(self, hw):
        h, w = hw
        short, long = (h, w) if h <= w else (w, h)
        new_short, new_long = self.resize_to, int(self.resize_to * long / short)  # as torchvision's Resize(int)
        size = (new_short, new_long) if h <= w else (new_long, new_short)
        s = self.img_size
        crop = (int(round((size[0] - s) / 2.0)), int(round((size[1] - s) / 2.0)), s, s)  # as CenterCrop
        return [ViewPlan((0, 0, h, w), size, self.interpolation, crop=crop)], None


def eval_transform(img_size: int = 224, crop_pct: float = 0.875, interpolation: str = "bicubic") -> ResizeCenterCrop:
    return ResizeCenterCrop(img_size, crop_pct, interpolation)
