"""The uint8 data path against the references it replaces: the authors' torchvision / timm pipelines on PIL
images, PIL's decode, torchvision's ops per sample. Same seeds, same draws; pixels within stated bounds."""
import io
import logging
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from conftest import SHARED_DATA
from pretrain import transforms as X
from pretrain import jpeg_region
from pretrain.images import EncodedImage, Pixels, UnreadableImage, resize_uint8, snap_box

MEAN, STD = torch.tensor(X.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(X.IMAGENET_STD).view(3, 1, 1)


def encode(image, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, fmt, **kw)
    return buf.getvalue()


def levels(a, b):
    """|a - b| of two normalised images, in uint8 levels."""
    return ((a - b) * STD * 255).abs()


@pytest.fixture(scope="module")
def photos():
    """Photo-like test images: the synthetic scenes (shapes, textures, noise) at 480 x 640, and coco_tiny50's
    photos where ../shared/data has them."""
    from pretrain.synthetic import render_scene, scene_rng

    arrays = [render_scene(scene_rng(3, i), (480, 640)).image for i in range(4)]
    coco = sorted((SHARED_DATA / "coco_tiny50" / "val2017").glob("*.jpg"))[:8]
    return arrays + [np.asarray(Image.open(f).convert("RGB")) for f in coco]


@pytest.fixture(scope="module")
def pngs(photos):
    """The photos losslessly encoded (decoded at full scale, as PIL would): pairs (array, EncodedImage)."""
    return [(a, EncodedImage(encode(a, "PNG", compress_level=1))) for a in photos]


def sample(transform, img, seed):
    """One sample through a uint8 transform and its device transform, as a batch of one would go."""
    torch.manual_seed(seed)
    out = transform(img)
    inputs = tuple(t[None] for t in out) if isinstance(out, tuple) else out[None]
    return transform.device_transform(inputs, "cpu")[0]


# --------------------------------------------------------------- decoding
def test_decode_equals_pils(photos):
    gray = photos[0].mean(axis=2).astype(np.uint8)
    cases = [encode(photos[0], "JPEG", quality=90), encode(photos[1], "JPEG", quality=75, subsampling=0),
             encode(gray, "JPEG"), encode(photos[2], "PNG"), encode(Image.fromarray(photos[3]).convert("CMYK"), "JPEG")]
    for data in cases:
        decoded = EncodedImage(data).decode()
        ours, scale = decoded.array, decoded.scale
        reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert scale == 1 and ours.shape == reference.shape and np.array_equal(ours, reference)


def subsampled_jpegs(photos):
    """JPEGs of each chroma layout libjpeg-turbo upsamples differently (4:4:4, 4:2:2, 4:2:0, gray), a
    progressive one, at sizes that are no multiple of the iMCU."""
    cut = [a[:a.shape[0] - 5 * i - 3, :a.shape[1] - 7 * i - 1] for i, a in enumerate(photos[:4])]
    return [encode(cut[0], "JPEG", quality=90, subsampling=0), encode(cut[1], "JPEG", quality=85, subsampling=1),
            encode(cut[2], "JPEG", quality=80, subsampling=2),
            encode(cut[3], "JPEG", quality=90, subsampling=2, progressive=True),
            encode(cut[0].mean(axis=2).astype(np.uint8), "JPEG", quality=90)]


def pil_decode(data, scale):
    """PIL's decode at 1/scale (its draft mode: libjpeg's DCT scaling), as RGB."""
    with Image.open(io.BytesIO(data)) as img:
        if scale > 1:
            img.draft("RGB", (img.width // scale, img.height // scale))  # PIL: the largest scale s <= its size ratio
        return np.array(img.convert("RGB"))


def test_region_decode_equals_a_whole_decode(photos):
    """Decoding only the region of the crops gives, inside every crop, the pixels of PIL's decode of the
    whole image at the same scale, bit for bit: at its edges (where a cropped decode's chroma upsampling
    differs unless the region is widened), for each subsampling, progressive files and each DCT scale."""
    assert jpeg_region.available(), "requirements.txt installs the turbojpeg wheel (its libturbojpeg 3)"
    rng = random.Random(0)
    checked = 0
    for data in subsampled_jpegs(photos):
        img = EncodedImage(data)
        h, w = img.size
        for scale in (1, 2, 4, 8):
            whole = Pixels(pil_decode(data, scale), scale)
            assert whole.array.shape[:2] == (-(-h // scale), -(-w // scale))
            for i in range(12):
                if i == 0:
                    box = (0, 0, h, w)
                elif i == 1:
                    box = (h - 1, w - 1, 1, 1)
                else:
                    bh, bw = rng.randint(scale, h), rng.randint(scale, w)
                    box = (rng.randint(0, h - bh), rng.randint(0, w - bw), bh, bw)
                inner = (box[0] + box[2] // 4, box[1] + box[3] // 4, max(box[2] // 2, 1), max(box[3] // 2, 1))
                part = img.decode(scale, box)
                assert part.array.size < whole.array.size or i == 0  # only the region was decoded
                for b in (box, inner):  # the region itself and a crop inside it
                    assert torch.equal(part.crop(b), whole.crop(b)), (len(data), scale, box, b)
                    checked += 1
    assert checked == 5 * 4 * 12 * 2


def test_region_decode_judges_broken_files_as_a_whole_decode(photos):
    """A file cut short below the crops is refused as a whole decode refuses it (the region decode, which
    stops after the region, must not take it), also when an EXIF thumbnail's EOI comes before the cut; corrupt
    entropy data gives PIL's pixels (PIL decodes what libjpeg-turbo reads only with a warning); trailing bytes
    after the EOI are read as PIL reads them."""
    data = encode(photos[0], "JPEG", quality=90)
    thumbnail = encode(photos[1][:64, :64], "JPEG")
    # a thumbnail (its own SOI ... EOI) inside an APP1 segment, as cameras write them
    with_thumb = data[:2] + b"\xff\xe1" + (len(thumbnail) + 8).to_bytes(2, "big") + b"Exif\0\0" + thumbnail + data[2:]
    box = (10, 10, 100, 200)  # the top rows: a decode of the region ends long before the cut
    for cut in (data[:len(data) * 2 // 3], with_thumb[:len(with_thumb) * 2 // 3]):
        assert not jpeg_region.ends(cut) and jpeg_region.decode_region(cut, 1, box) is None
        with pytest.raises(UnreadableImage):
            EncodedImage(cut).decode(1, box)
    assert jpeg_region.ends(data) and jpeg_region.ends(with_thumb)
    assert torch.equal(EncodedImage(with_thumb).decode(1, box).crop(box), Pixels(pil_decode(data, 1)).crop(box))
    for corrupt in (data[:1500] + bytes(400) + data[1900:], data[:1500] + b"\xff\xd0" * 50 + data[1600:]):
        assert torch.equal(EncodedImage(corrupt).decode(1, box).crop(box), Pixels(pil_decode(corrupt, 1)).crop(box))
    trailing = data + b"trailing bytes"
    assert torch.equal(EncodedImage(trailing).decode(1, box).crop(box), Pixels(pil_decode(data, 1)).crop(box))


def test_reduced_decode_stays_within_its_bound(photos):
    """The crop-aware decode's bound (README, Data loading): each edge of the crop moves by at most half a
    pixel of the reduced image (s/2 source pixels, under half an output pixel), the reduced crop keeps more
    than the output's resolution, and against a full decode of the same box every crop has PSNR >= 30 dB,
    their mean absolute difference averaging under 1.6 levels."""
    imgs = [EncodedImage(encode(a, "JPEG", quality=90)) for a in photos[:2]]  # the scenes, at 2x: 960 x 1280
    imgs = [EncodedImage(encode(np.asarray(Image.fromarray(a).resize((1280, 960), Image.BICUBIC)), "JPEG",
                                quality=90)) for a in photos[:2]] + imgs
    imgs += [EncodedImage(encode(a, "JPEG", quality=90)) for a in photos[4:]]
    crop_box = X.torchvision_crop((0.2, 1.0))
    errors, scales = [], set()
    for seed in range(120):
        img = imgs[seed % len(imgs)]
        out = (224, 224) if seed % 2 else (112, 112)
        torch.manual_seed(seed)
        box = crop_box(*img.size)
        s = img.reduced_scale(box, out)
        if s == 1:
            continue
        scales.add(s)
        reduced, full = img.decode(s).array, img.decode(1).array
        top, left, h, w = snapped = snap_box(box, s, reduced.shape[:2])
        assert h >= out[0] + 1 and w >= out[1] + 1
        source = [v * s for v in snapped]
        edges = (source[0] - box[0], source[1] - box[1], source[0] + source[2] - box[0] - box[2],
                 source[1] + source[3] - box[1] - box[3])
        assert max(map(abs, edges)) <= s / 2 and max(map(abs, edges)) * out[0] / box[2] < 0.5
        a = resize_uint8(torch.from_numpy(reduced).permute(2, 0, 1)[:, top:top + h, left:left + w], out, "bicubic")
        b = resize_uint8(torch.from_numpy(full).permute(2, 0, 1)[:, source[0]:source[0] + source[2],
                                                                source[1]:source[1] + source[3]], out, "bicubic")
        d = (a.float() - b.float())
        errors.append((d.abs().mean().item(), 10 * math.log10(255**2 / max(d.pow(2).mean().item(), 1e-9))))
    assert len(errors) >= 30 and scales >= {2, 4}
    assert min(p for _, p in errors) >= 30.0, errors
    assert np.mean([m for m, _ in errors]) < 1.6


# ------------------------------------------------------------------- MAE
def authors_mae(size=224):
    return T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(X.IMAGENET_MEAN, X.IMAGENET_STD)])


def test_mae_crops_flips_and_pixels_are_the_authors(pngs):
    """Same seed, same crop and flip as torchvision's RandomResizedCrop + RandomHorizontalFlip on the PIL image;
    the pixels within PIL's rounding (full decode: a PNG)."""
    reference, ours = authors_mae(112), X.mae_transform(112, 0.2)
    diffs = []
    for seed in range(24):
        array, img = pngs[seed % len(pngs)]
        pil = Image.fromarray(array)
        torch.manual_seed(seed)
        expected_box = T.RandomResizedCrop.get_params(pil, [0.2, 1.0], [3 / 4, 4 / 3])
        expected_flip = bool(torch.rand(1) < 0.5)
        torch.manual_seed(seed)
        (view,), _ = ours.plan(array.shape[:2])
        assert (tuple(view.box), view.flip) == (tuple(expected_box), expected_flip)
        got = sample(ours, img, seed)
        torch.manual_seed(seed)
        diffs.append(levels(got, reference(pil)))
    d = torch.stack(diffs)
    # torch's uint8 resampling rounds as Pillow's; where Pillow >= 13 runs its two passes in the other order,
    # a few pixels beside clipped bicubic overshoots differ more.
    assert (d <= 1.001).float().mean() > 0.999 and d.mean() < 0.05


def crop_distribution(height, width, scale, ratio, n, rng):
    """RandomResizedCrop's boxes, simulated from its definition (numpy; no torchvision): area fraction uniform on
    ``scale``, log aspect ratio uniform, kept if the box fits (10 tries), else the centred fallback."""
    areas, log_ratios = [], []
    for _ in range(n):
        for _ in range(10):
            area = height * width * rng.uniform(*scale)
            r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
            w, h = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
            if 0 < w <= width and 0 < h <= height:
                break
        else:
            h, w = height, width
        areas.append(h * w / (height * width))
        log_ratios.append(math.log(w / h))
    return np.array(areas), np.array(log_ratios)


def test_mae_output_statistics_match_the_authors(pngs):
    """Over many samples: the range, the per-channel mean and std of the normalised images, and the crop
    areas and aspect ratios (the distribution RandomResizedCrop(scale=(0.2, 1)) draws), as the authors'."""
    reference, ours = authors_mae(32), X.mae_transform(32, 0.2)
    outs, refs, areas, log_ratios = [], [], [], []
    for seed in range(160):
        array, img = pngs[seed % 4]
        outs.append(sample(ours, img, seed))
        torch.manual_seed(seed)
        refs.append(reference(Image.fromarray(array)))
        torch.manual_seed(seed)
        (view,), _ = ours.plan((480, 640))
        areas.append(view.box[2] * view.box[3] / (480 * 640))
        log_ratios.append(math.log(view.box[3] / view.box[2]))
    o, r = torch.stack(outs), torch.stack(refs)
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert (o >= low - 1e-6).all() and (o <= high + 1e-6).all() and o.dtype == torch.float32
    assert torch.allclose(o.mean(dim=(0, 2, 3)), r.mean(dim=(0, 2, 3)), atol=2e-3)
    assert torch.allclose(o.std(dim=(0, 2, 3)), r.std(dim=(0, 2, 3)), atol=2e-3)
    sim_areas, sim_log_ratios = crop_distribution(480, 640, (0.2, 1.0), (3 / 4, 4 / 3), 20000,
                                                  np.random.default_rng(0))
    assert 0.2 - 2e-3 <= min(areas) and max(areas) <= 1.0 and max(map(abs, log_ratios)) <= math.log(4 / 3) + 0.01
    assert abs(np.mean(areas) - sim_areas.mean()) < 0.04 and abs(np.std(areas) - sim_areas.std()) < 0.03
    assert abs(np.mean(log_ratios) - sim_log_ratios.mean()) < 0.04


def test_normalising_on_the_device_is_totensor_normalize_bit_for_bit():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    reference = torch.stack([T.Normalize(X.IMAGENET_MEAN, X.IMAGENET_STD)(TF.to_tensor(TF.to_pil_image(i)))
                             for i in x])
    assert torch.equal(X.ToFloatNormalized()(x, "cpu"), reference)


# ------------------------------------------------------------------ MoCo
def authors_moco_v2(size=224):
    """The project's MoCo v2 "aug+" before this change: torchvision on PIL images."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(X.blur_kernel_size(size), sigma=(0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(X.IMAGENET_MEAN, X.IMAGENET_STD)])


@pytest.mark.parametrize("colour_on_device", [False, True])
def test_moco_views_are_the_authors_up_to_pils_uint8_colour_ops(pngs, colour_on_device):
    """Same seed: the same two crops, jitter factors and order, grayscale, blur sigma and flips as the PIL
    pipeline (drawn in its order); the colour operations run in float where PIL rounds each to uint8 (and
    quantises hue to 8 bits): mean difference ~1.2 levels, 99% of pixels within 4, none beyond 16."""
    reference = authors_moco_v2(112)
    ours = X.moco_transform("v2", 112, 0.2, colour_on_device=colour_on_device)
    diffs = []
    for seed in range(16):
        array, img = pngs[seed % len(pngs)]
        torch.manual_seed(seed)
        expected = torch.stack([reference(Image.fromarray(array)), reference(Image.fromarray(array))])
        diffs.append(levels(sample(ours, img, seed), expected))
    d = torch.stack(diffs)
    assert d.mean() < 1.6 and (d <= 4.001).float().mean() > 0.985 and d.max() <= 16
    assert d.mean(dim=(1, 2, 3, 4)).max() < 3  # no sample off by a wrong parameter


def test_colour_on_the_device_equals_colour_in_the_loader(pngs):
    """Where the colour augmentations run changes nothing but the loader's rounding back to uint8."""
    img = pngs[1][1]
    for version in ("v1", "v2"):
        loader = X.moco_transform(version, 64, 0.2, colour_on_device=False)
        device = X.moco_transform(version, 64, 0.2, colour_on_device=True)
        for seed in range(6):
            assert levels(sample(loader, img, seed), sample(device, img, seed)).max() <= 0.5 + 1e-3


def test_colour_ops_are_torchvisions_per_sample():
    """The batched colour augmentations against torchvision's functional ops, one sample at a time."""
    torch.manual_seed(0)
    x = torch.rand(24, 3, 20, 20)
    params = torch.zeros(24, X.COLOUR_PARAMS)
    for i in range(24):
        params[i, X.JITTER] = float(i % 5 != 0)
        params[i, X.ORDER] = torch.randperm(4).float()
        params[i, X.FACTORS] = torch.tensor([0.6 + 0.8 * torch.rand(1).item() for _ in range(3)] + [
            0.2 * torch.rand(1).item() - 0.1])
        params[i, X.GRAY] = float(i % 3 == 0)
        params[i, X.SIGMA] = 0.0 if i % 2 else 0.1 + 1.9 * torch.rand(1).item()
        params[i, X.SOLARIZE] = float(i % 4 == 1)
    ops = [lambda y, f: TF.adjust_brightness(y, f), lambda y, f: TF.adjust_contrast(y, f),
           lambda y, f: TF.adjust_saturation(y, f), lambda y, f: TF.adjust_hue(y, f)]
    for version in ("v1", "v2"):
        ours = X.ColourAugment(gray_first=version == "v1", blur_kernel=7)(x.clone(), params)
        for i in range(24):
            p, y = params[i], x[i]
            if version == "v1" and p[X.GRAY]:
                y = TF.rgb_to_grayscale(y, num_output_channels=3)
            if p[X.JITTER]:
                for op in p[X.ORDER].long().tolist():
                    y = ops[op](y, p[X.FACTORS][op].item())
            if version == "v2" and p[X.GRAY]:
                y = TF.rgb_to_grayscale(y, num_output_channels=3)
            if p[X.SIGMA]:
                y = TF.gaussian_blur(y, [7, 7], [p[X.SIGMA].item()] * 2)
            if p[X.SOLARIZE]:  # PIL's ImageOps.solarize (threshold 128 of 255)
                y = TF.solarize(y, 128 / 255)
            assert torch.allclose(ours[i], y, atol=2e-5), (version, i)


# ------------------------------------------------------------ evaluation
def test_eval_transform_is_resize_and_centre_crop(photos):
    reference = T.Compose([T.Resize(73, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(64), T.ToTensor(),
                           T.Normalize(X.IMAGENET_MEAN, X.IMAGENET_STD)])
    ours = X.eval_transform(64, crop_pct=0.875)
    for array in photos[:3] + [photos[0][:300, :200]]:
        d = levels(sample(ours, EncodedImage(encode(array, "PNG")), 0), reference(Image.fromarray(array)))
        assert (d <= 1.001).float().mean() > 0.999 and d.mean() < 0.05


# -------------------------------------------------- classification protocols
def timm_reference(d):
    from timm.data import create_transform

    return create_transform(d.img_size, is_training=True, scale=(d.crop_min_scale, 1.0), hflip=0.5,
                            color_jitter=None, auto_augment=d.auto_augment or None, interpolation=d.interpolation,
                            re_prob=d.reprob, re_mode=d.remode, re_count=d.recount,
                            mean=X.IMAGENET_MEAN, std=X.IMAGENET_STD)


@pytest.mark.parametrize("protocol", ["mae_linear", "moco_linear", "mae_finetune"])
def test_protocol_train_transforms_are_timms(pngs, protocol):
    """timm's own pipeline on the PIL image, seeded as the dataset seeds a sample: the same crops, flips and
    RandAugment ops; erasing's boxes too (the fill, noise, comes from the device's generator: compared by
    where it is)."""
    from transfer.classification.config import load_cls_config
    from transfer.classification.data import SeedGlobalRandom, posterize, train_transform
    from timm.data.auto_augment import RandAugment

    cfg = load_cls_config(None, ["data.synthetic=true", "data.img_size=64", "data.remode=const"], protocol=protocol)
    ours = train_transform(cfg.data)
    reference = timm_reference(cfg.data)
    for t in reference.transforms:
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = posterize
    reference = SeedGlobalRandom(reference)
    diffs = []
    for seed in range(12):
        array, img = pngs[seed % len(pngs)]
        torch.manual_seed(seed)
        expected = reference(Image.fromarray(array))
        got = sample(ours, img, seed)
        erased = (expected == 0).all(dim=0)  # const mode fills zeros, which a photo's pixels never give
        assert torch.equal(erased, (got == 0).all(dim=0))
        diffs.append(levels(got, expected)[:, ~erased])
    d = torch.cat([x.flatten() for x in diffs])
    # RandAugment's ops act on our crop, which is PIL's within its rounding; some ops (posterize, solarize)
    # turn a level's difference into more at a few pixels.
    assert (d <= 1.001).float().mean() > 0.99 and d.mean() < 0.2


def test_erasing_boxes_are_timms():
    from timm.data.random_erasing import RandomErasing

    from transfer.classification.data import RandomErasingOnDevice

    import random

    timm_erasing = RandomErasing(0.7, mode="const", max_count=3, device="cpu")
    ours = RandomErasingOnDevice(timm_erasing)
    for seed in range(40):
        random.seed(seed)
        expected = timm_erasing(torch.ones(3, 40, 50)) == 0
        random.seed(seed)
        params = ours.draw((40, 50))
        got = ours(torch.ones(1, 3, 40, 50), params[None])[0] == 0
        assert torch.equal(got, expected), seed


# ------------------------------------------------------- backends, loop
def test_dali_falls_back_to_pil_where_it_cannot_run(tmp_path, caplog):
    from torch.utils.data import DataLoader

    from pretrain.config import ConfigError, load_config
    from pretrain.data import ImageFolderDataset, ResumableSampler, build_train_loader, resolve_backend

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    ds = ImageFolderDataset(tmp_path, X.mae_transform(8))
    caplog.set_level(logging.WARNING)
    assert resolve_backend("dali", ds, torch.device("cpu")) == "pil"
    assert "data.backend=dali: DALI decodes on a CUDA device and this run trains on cpu" in caplog.text
    assert "falling back to data.backend=pil" in caplog.text
    loader = build_train_loader(ds, ResumableSampler(1), 1, 0, torch.device("cpu"), 0, "dali")
    assert isinstance(loader, DataLoader) and next(iter(loader))[0].dtype == torch.uint8
    with pytest.raises(ConfigError, match="data.backend must be pil or dali"):
        load_config(None, ["data.synthetic=true", "data.backend=nvjpeg"])


def cls_train_transform(protocol, size=64):
    from transfer.classification.config import load_cls_config
    from transfer.classification.data import train_transform

    return train_transform(load_cls_config(None, ["data.synthetic=true", f"data.img_size={size}"],
                                           protocol=protocol).data)


def mocov3_views():
    from pretrain.methods.mocov3 import BYOL_VIEWS

    return X.TwoViews(BYOL_VIEWS, 64, 0.08, colour_on_device=True)


GPU_DECODER_TAKES = {  # the transforms whose plan leaves the host nothing (the DALI backend's)
    "mae": lambda: X.mae_transform(64),
    "moco_v2 (colour on the device)": lambda: X.moco_transform("v2", 64, colour_on_device=True),
    "mocov3 (colour on the device)": lambda: mocov3_views(),
    "mae_linear": lambda: cls_train_transform("mae_linear"),
    "moco_linear": lambda: cls_train_transform("moco_linear"),
}


@pytest.mark.parametrize("name", sorted(GPU_DECODER_TAKES))
def test_a_gpu_decoder_given_the_plan_gives_the_samples_of_the_whole_transform(name, photos):
    """What the DALI backend does per sample (the plan under the sample's seed, the views cut elsewhere, then
    ``assemble``) gives the samples of the whole transform, draw for draw: the same crops, flips and colour
    parameters, so exact resumption holds across backends. Here the views are cut by the CPU path."""
    from pretrain.data import SeededSample, seeded

    transform = GPU_DECODER_TAKES[name]()
    assert transform.host_work is None
    for seed, photo in enumerate(photos[:4] * 2):
        img = EncodedImage(encode(photo, "JPEG", quality=90))
        whole = SeededSample(transform)(img, seed)
        with seeded(seed):
            views, params = transform.plan(img.size)
        split = transform.assemble(X.run_views(img, views), params)
        for a, b in zip(*(out if isinstance(out, tuple) else (out,) for out in (whole, split))):
            assert torch.equal(a, b), (name, seed)


def test_transforms_with_work_after_the_crop_stay_on_the_cpu_loader():
    from pretrain.dali import dali_problem
    from pretrain.data import SeededSample

    finetune = cls_train_transform("mae_finetune")
    assert finetune.host_work == "RandAugment (PIL) and random erasing's boxes"
    assert X.moco_transform("v2", 64, colour_on_device=False).host_work.startswith("the colour augmentations")
    with pytest.raises(RuntimeError, match="RandAugment"):
        finetune.assemble([torch.zeros(3, 64, 64, dtype=torch.uint8)], None)

    class Dataset:  # what dali_problem reads
        files = ["a.jpg"]
        transform = SeededSample(finetune)

    for device in ("cpu", "cuda"):  # the data's reason, on any machine
        assert dali_problem(Dataset, torch.device(device)).startswith("RandAugment (PIL) and random erasing's")
    Dataset.transform = SeededSample(cls_train_transform("mae_linear"))
    assert dali_problem(Dataset, torch.device("cpu")).startswith("DALI decodes on a CUDA device")


def test_wait_timer_counts_the_time_spent_waiting_for_items(monkeypatch):
    from pretrain import trainer

    clock = [0.0]
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: clock[0])

    def slow_items():
        for i in range(3):
            clock[0] += 2.0  # the loader takes 2 s an item
            yield i

    timer = trainer.WaitTimer(slow_items())
    for _ in timer:
        clock[0] += 1.0  # the step takes 1 s
    assert timer.waited == 6.0 and clock[0] == 9.0


# ------------------------------------------------------------- GPU check
@pytest.mark.slow
def test_gpu_check_runs_every_row_on_a_cpu_in_tiny_mode():
    """benchmarks/gpu_check.py --cpu --tiny: the prepared GPU script, every row, with tiny models (~30 s)."""
    import importlib.util

    from conftest import run_tool

    proc = run_tool("benchmarks/gpu_check.py", "--cpu", "--tiny", timeout=300)
    table = proc.stdout
    for row in ("MAE mae_vit_pico_patch8 pretraining, project", "authors (re-derived)", "MoCo v2 resnet18",
                "ViTDet", "UperNet", "data path, MAE: loader per core", "data path, MoCo v2 device part"):
        assert row in table, (row, table)
    assert "FAILED" not in table and "images/s" in table and "s/iter" in table
    if importlib.util.find_spec("detectron2") is None:
        assert "skipped: detectron2 is not installed" in table


# ------------------------------------------------------------ checks before a run starts
def test_readable_check_probes_only_as_many_files_as_the_loader_would_skip(tmp_path):
    """The loader substitutes up to 1% unreadable files: the check before training refuses a folder only
    when more than that many of its first files fail (a run that would stop within its first epoch)."""
    from pretrain.data import ImageFolderDataset
    from pretrain.errors import DataError

    folder = tmp_path / "imgs" / "c"
    folder.mkdir(parents=True)
    for i in range(300):  # 1% of 300: 3 unreadable files allowed
        name = folder / f"{i:03d}.jpg"
        if i < 3:
            name.write_text("not an image")
        else:
            name.write_bytes(encode(np.full((8, 8, 3), i % 256, np.uint8), "JPEG"))
    ds = ImageFolderDataset(tmp_path / "imgs", X.ResizeCenterCrop(8, 1.0, "bilinear"))
    ds.check_readable()  # the 4th file reads
    (folder / "003.jpg").write_text("not an image either")
    with pytest.raises(DataError, match=r"no readable image in .*: the first 4 of its 300 files fail to decode"):
        ds.check_readable()  # more than the loader would skip before its first batch ends the run


@pytest.mark.parametrize("images, batch, accum, world, ok", [
    (8, 8, 1, 1, True), (7, 8, 1, 1, False), (16, 4, 2, 2, True), (15, 4, 2, 2, True), (13, 4, 2, 2, False),
])
def test_full_step_check_is_the_samplers_arithmetic(images, batch, accum, world, ok):
    """The check before training says what the sampler and loader then do: at least one whole optimizer step."""
    from pretrain.data import ResumableSampler, check_full_step
    from pretrain.errors import DataError

    steps = (ResumableSampler(images, 0, world).num_per_rank // batch) // accum
    assert (steps > 0) == ok
    if ok:
        check_full_step(images, batch, accum, world, "here")
    else:
        with pytest.raises(DataError, match="fewer than one step"):
            check_full_step(images, batch, accum, world, "here")
