"""The DALI backend (pretrain/dali.py) against the ``pil`` loader: the same files skipped and listed, the same
plans on the stored (not EXIF-rotated) pixels, the same batches in the same order.

The host half (``check_readable``, ``HostPlans``, the graph ``build_pipeline`` asks DALI for) runs everywhere;
the pipeline itself runs in DALI's CPU-only mode where DALI is installed (``pip install -e .[dali]``; this
project's CI has no DALI, and these tests skip there)."""
import io
import sys
import types as pytypes

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain import transforms as X
from pretrain.dali import HostPlans, build_pipeline, check_readable
from pretrain.data import ImageFolderDataset, ResumableSampler, build_train_loader, seeded
from pretrain.errors import DataError
from pretrain.images import EncodedImage, UnreadableImage
from pretrain.jpeg_region import scan_start
from pretrain.synthetic import render_scene, scene_rng

ORIENTATION = 0x0112  # the EXIF tag; 6: the camera was turned 90 degrees (a viewer rotates the image)
SIZE = 32  # output size; every source below is under 2 * (SIZE + 1) a side, so pil decodes at full scale


def encode(array, fmt="JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kw)
    return buf.getvalue()


def rotated_jpeg(array) -> bytes:
    """A JPEG whose EXIF says to rotate it 90 degrees: the stored pixels are ``array``."""
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[ORIENTATION] = 6
    return encode(array, quality=92, exif=exif.tobytes())


def scene(i, hw):
    return render_scene(scene_rng(5, i), hw).image


@pytest.fixture
def folder(tmp_path):
    """Two classes of small images (rotated, gray, PNG among them) and two unreadable files."""
    root = tmp_path / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
    (root / "a" / "0.jpg").write_bytes(encode(scene(0, (48, 60)), quality=92))
    (root / "a" / "1_rotated.jpg").write_bytes(rotated_jpeg(scene(1, (36, 64))))  # 36 x 64 stored, 64 x 36 shown
    (root / "a" / "2_gray.jpg").write_bytes(encode(scene(2, (50, 44)).mean(-1).astype(np.uint8), quality=90))
    (root / "a" / "3_cut.jpg").write_bytes(encode(scene(3, (60, 60)))[:700])  # a download cut short
    (root / "b" / "4.png").write_bytes(encode(scene(4, (40, 52)), "PNG"))
    (root / "b" / "5_rotated.jpg").write_bytes(rotated_jpeg(scene(5, (64, 40))))
    (root / "b" / "6.jpg").write_bytes(encode(scene(6, (58, 46)), quality=85, subsampling=0))
    (root / "b" / "7_text.jpg").write_bytes(b"not an image")
    (root / "b" / "8.jpg").write_bytes(encode(scene(8, (41, 63)), quality=95, progressive=True))
    return root


UNREADABLE = {"3_cut.jpg", "7_text.jpg"}


def listed(path):
    return {line.split("\t", 1)[0].rsplit("/", 1)[-1] for line in path.read_text().splitlines()}


# ------------------------------------------------------------ the host's half (no DALI needed)
def pil_refuses(data: bytes) -> bool:
    """What the pil backend does with a file: header, then a whole decode."""
    try:
        EncodedImage(data).decode(1)
        return False
    except UnreadableImage:
        return True


def host_refuses(data: bytes) -> bool:
    try:
        check_readable(EncodedImage(data))
        return False
    except UnreadableImage:
        return True


def test_the_host_refuses_exactly_the_files_pil_refuses():
    """DALI's decoders stop the whole pipeline on a file they cannot read, so the host refuses it first; it must
    refuse what pil refuses (cut short anywhere, even by one byte; damaged headers; PNG with bad chunks) and
    accept what pil reads (damaged entropy data, bytes after the end, EXIF-rotated files)."""
    jpeg = encode(scene(0, (60, 50)), quality=90)
    progressive = encode(scene(1, (60, 50)), quality=90, progressive=True)
    png = encode(scene(2, (40, 30)), "PNG")
    start = scan_start(jpeg)

    def flipped(data, pos):
        out = bytearray(data)
        out[pos] ^= 0x55
        return bytes(out)

    cases = {
        "jpeg": jpeg, "progressive": progressive, "png": png, "rotated": rotated_jpeg(scene(3, (30, 50))),
        "bytes after the end": jpeg + b"\0" * 16,
        "damaged scan": flipped(jpeg, start + 200), "damaged scan end": flipped(jpeg, len(jpeg) - 20),
        "png damaged": flipped(png, len(png) // 2), "png cut": png[:-30],
        "empty": b"", "text": b"not an image", "header only": jpeg[:start],
    }
    for cut in (300, len(jpeg) // 2, len(jpeg) - 2, len(jpeg) - 1):
        cases[f"jpeg[:{cut}]"] = jpeg[:cut]
    for cut in (len(progressive) // 2, len(progressive) - 1):
        cases[f"progressive[:{cut}]"] = progressive[:cut]
    refused = {name for name, data in cases.items() if pil_refuses(data)}
    assert refused >= {"empty", "text", "png cut", "jpeg[:300]", f"jpeg[:{len(jpeg) - 1}]"}  # the cases mean it
    assert "damaged scan" not in refused and "bytes after the end" not in refused
    assert {name for name, data in cases.items() if host_refuses(data)} == refused


def pil_items(folder, transform, items, bad_list):
    dataset = ImageFolderDataset(folder, transform, bad_list=str(bad_list), max_bad_fraction=0.5)
    return [dataset[item] for item in items]


def test_host_plans_skip_and_list_unreadable_files_as_the_pil_loader(folder, tmp_path):
    """Each (index, seed) gives the file the pil loader would use (the next readable one in place of an
    unreadable one), the plan drawn under that seed on its stored size, and the same unreadable list."""
    transform = X.moco_transform("v2", SIZE, colour_on_device=True)
    plans = HostPlans(ImageFolderDataset(folder, transform, bad_list=str(tmp_path / "dali.txt"), max_bad_fraction=0.5))
    items = list(ResumableSampler(len(plans), seed=1))
    expected = pil_items(folder, transform, items, tmp_path / "pil.txt")
    for (index, seed), (pil_sample, pil_label) in zip(items, expected):
        data, cuts, params, label = plans[(index, seed)]
        assert label == pil_label
        img = EncodedImage(data.tobytes())
        with seeded(seed):
            views, _ = transform.plan(img.size)
        assert torch.equal(params, pil_sample[1])  # the colour parameters: the same draws
        for (anchor, shape, flip), v in zip(cuts, views):
            top, left, h, w = v.box
            assert (anchor.tolist(), shape.tolist(), int(flip)) == ([left, top], [w, h], int(v.flip))
            assert top + h <= img.size[0] and left + w <= img.size[1]
    assert listed(tmp_path / "dali.txt") == listed(tmp_path / "pil.txt") == UNREADABLE


def test_too_many_unreadable_files_stop_the_host_as_they_stop_pil(folder, tmp_path):
    transform = X.mae_transform(SIZE)
    for dataset in (ImageFolderDataset(folder, transform), HostPlans(ImageFolderDataset(folder, transform))):
        names = [p.name for p in (dataset.dataset if isinstance(dataset, HostPlans) else dataset).files]
        dataset[(names.index("3_cut.jpg"), 0)]  # one unreadable file of 9: allowed (at least 1)
        with pytest.raises(DataError, match="2 unreadable images"):
            dataset[(names.index("7_text.jpg"), 0)]


def test_plans_are_drawn_on_the_stored_pixels_of_an_exif_rotated_jpeg():
    """pil decodes the pixels as stored (no EXIF rotation) and the plans use the header's size: DALI must decode
    the same way (``adjust_orientation=False``), or a rotated file's boxes fall outside its decoded image."""
    stored = scene(0, (36, 64))
    img = EncodedImage(rotated_jpeg(stored))
    assert Image.open(io.BytesIO(img.data)).getexif()[ORIENTATION] == 6
    assert img.size == (36, 64) and img.decode(1).array.shape == (36, 64, 3)
    transform = X.mae_transform(SIZE, min_scale=0.9)
    with seeded(0):
        (view,), _ = transform.plan(img.size)
    assert view.box[1] + view.box[3] > 36  # this box reaches past the width the rotated image would have


class FakeDali:
    """The parts of nvidia.dali that ``build_pipeline`` calls, recording the graph it asks for."""

    def __init__(self):
        self.calls, self.pipelines = [], []
        fn = pytypes.SimpleNamespace(decoders=pytypes.SimpleNamespace())
        for name in ("external_source", "resize", "flip", "transpose"):
            setattr(fn, name, self._op(name))
        fn.decoders.image_slice = self._op("image_slice")
        dali_types = pytypes.SimpleNamespace(UINT8="u8", INT32="i32", RGB="rgb", INTERP_CUBIC="cubic",
                                             INTERP_LINEAR="linear")
        recorder = self

        class Pipeline:
            def __init__(self, **kw):
                self.kw, self.outputs, self.built = kw, None, False
                recorder.pipelines.append(self)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def set_outputs(self, *outputs):
                self.outputs = outputs

            def build(self):
                self.built = True

        self.modules = {"nvidia.dali": pytypes.SimpleNamespace(fn=fn, types=dali_types),
                        "nvidia.dali.pipeline": pytypes.SimpleNamespace(Pipeline=Pipeline)}

    def _op(self, name):
        def op(*inputs, **kw):
            self.calls.append((name, inputs, kw))
            if name == "external_source":
                return [f"input{i}" for i in range(kw["num_outputs"])]
            return f"{name}{len(self.calls)}"
        return op


@pytest.mark.parametrize("device_id", [None, 0])
def test_the_pipeline_decodes_without_orientation_asynchronously(monkeypatch, device_id):
    fake = FakeDali()
    for name, module in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    transform = X.moco_transform("v2", SIZE, colour_on_device=True)
    with seeded(0):
        views, _ = transform.plan((64, 64))
    pipe = build_pipeline(views, batch_size=4, num_threads=2, device_id=device_id, source=print, prefetch=3)
    assert pipe.built and pipe.kw == dict(batch_size=4, num_threads=2, device_id=device_id, prefetch_queue_depth=3,
                                          exec_async=True, exec_pipelined=True)
    (_, _, source_kw), *ops = fake.calls
    assert source_kw["source"] is print and source_kw["batch"] and source_kw["num_outputs"] == 1 + 3 * len(views)
    decodes = [(inputs, kw) for name, inputs, kw in ops if name == "image_slice"]
    assert [inputs for inputs, _ in decodes] == [("input0", "input1", "input2"), ("input0", "input4", "input5")]
    for _, kw in decodes:
        assert kw["adjust_orientation"] is False
        assert kw["device"] == ("cpu" if device_id is None else "mixed")
        assert not kw["normalized_anchor"] and not kw["normalized_shape"]
    assert [kw["horizontal"] for name, _, kw in ops if name == "flip"] == ["input3", "input6"]
    assert len(pipe.outputs) == len(views) == 2


# ------------------------------------------------------------ the pipeline, in DALI's CPU-only mode
TRANSFORMS = {"mae": lambda: X.mae_transform(SIZE),
              "moco_v2": lambda: X.moco_transform("v2", SIZE, colour_on_device=True)}


def loaders(folder, tmp_path, transform, host_workers, batch_size=2):
    """The pil loader and the DALI loader (CPU-only) over the same files, each with its own unreadable list."""
    from pretrain.dali import DaliLoader

    made = {}
    for backend in ("pil", "dali"):
        dataset = ImageFolderDataset(folder, transform, bad_list=str(tmp_path / f"{backend}.txt"), max_bad_fraction=0.5)
        sampler = ResumableSampler(len(dataset), seed=7)
        if backend == "pil":
            made[backend] = build_train_loader(dataset, sampler, batch_size, 0, torch.device("cpu"), 0, "pil")
        else:
            made[backend] = DaliLoader(dataset, sampler, batch_size, torch.device("cpu"), num_threads=1,
                                       host_workers=host_workers)
    return made["pil"], made["dali"]


def assert_same_batches(pil_batches, dali_batches):
    assert len(pil_batches) == len(dali_batches)
    for (x, y), (u, v) in zip(pil_batches, dali_batches):
        assert torch.equal(y, v)  # the same files, in the same order
        if isinstance(x, (list, tuple)):  # (pixels, colour parameters)
            assert torch.equal(x[1], u[1])
            x, u = x[0], u[0]
        assert x.shape == u.shape and u.dtype == torch.uint8
        diff = (x.int() - u.int()).abs()
        # Same crops and flips: only resampling's rounding differs (DALI's kernels against torch's; the decode
        # is libjpeg-turbo's on both). A box off by a pixel, or a rotated decode, gives tens of levels.
        assert diff.float().mean() < 0.5 and diff.max() <= 8, (diff.float().mean(), diff.max())


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("host_workers", [0, 1])
def test_dali_cpu_pipeline_gives_the_pil_loaders_batches(folder, tmp_path, name, host_workers):
    pytest.importorskip("nvidia.dali")
    pil, dali = loaders(folder, tmp_path, TRANSFORMS[name](), host_workers)
    assert len(dali) == len(pil) == 4
    for epoch in range(2):
        pil.sampler.set_position(epoch)
        dali.sampler.set_position(epoch)
        assert_same_batches(list(pil), list(dali))
    assert listed(tmp_path / "dali.txt") == listed(tmp_path / "pil.txt") == UNREADABLE


def test_dali_loader_resumes_mid_epoch_after_an_abandoned_one(folder, tmp_path):
    """An epoch left after one batch (a run stopped at its step limit) leaves nothing behind in the pipeline's
    prefetched batches: the next iteration starts where the sampler says, as pil's does."""
    pytest.importorskip("nvidia.dali")
    pil, dali = loaders(folder, tmp_path, X.mae_transform(SIZE), host_workers=0)
    next(iter(dali))
    for loader in (pil, dali):
        loader.sampler.set_position(3, start=4)
    assert len(dali) == len(pil) == 2
    assert_same_batches(list(pil), list(dali))


class CountingSampler(ResumableSampler):
    drawn = 0

    def __iter__(self):
        for item in super().__iter__():
            self.drawn += 1
            yield item


def test_dali_loader_decodes_ahead_of_the_step(folder, tmp_path):
    """When the step gets its first batch, the next one is already planned and handed to DALI (pipelined);
    the serial loader planned a batch only when the step asked for it."""
    pytest.importorskip("nvidia.dali")
    from pretrain.dali import DaliLoader

    dataset = ImageFolderDataset(folder, X.mae_transform(SIZE), max_bad_fraction=0.5)
    sampler = CountingSampler(len(dataset))
    next(iter(DaliLoader(dataset, sampler, 2, torch.device("cpu"), num_threads=1, prefetch=2)))
    assert sampler.drawn == 2 * 2


def test_dali_loader_stops_on_too_many_unreadable_files(folder, tmp_path):
    pytest.importorskip("nvidia.dali")
    from pretrain.dali import DaliLoader

    dataset = ImageFolderDataset(folder, X.mae_transform(SIZE), bad_list=str(tmp_path / "bad.txt"))
    loader = DaliLoader(dataset, ResumableSampler(len(dataset), shuffle=False), 3, torch.device("cpu"), num_threads=1)
    with pytest.raises(DataError, match="2 unreadable images"):
        list(loader)
