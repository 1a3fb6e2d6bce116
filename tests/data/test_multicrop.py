import numpy as np
import pytest
import torch
from PIL import Image

from swav.data.multicrop import MultiCrop, MultiCropConfig, sample_crop_box
from swav.data.transforms import to_uint8_tensor


def image(h=120, w=160):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_shapes_and_groups():
    mc = MultiCrop(n_crops=[2, 3], sizes=[48, 24], min_scale=[0.3, 0.1], max_scale=[1, 0.3])
    crops = mc(image())
    assert len(crops) == 5
    assert [tuple(c.shape) for c in crops] == [(3, 48, 48)] * 2 + [(3, 24, 24)] * 3
    assert mc.groups == [(2, 48), (3, 24)]
    assert all(c.dtype == torch.float32 for c in crops)


def test_reproducible_from_seed():
    mc = MultiCrop(n_crops=[2, 2], sizes=[32, 16], min_scale=[0.2, 0.05], max_scale=[1, 0.2])
    a = mc(image(), torch.Generator().manual_seed(5))
    b = mc(image(), torch.Generator().manual_seed(5))
    c = mc(image(), torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("scale", [(0.05, 0.14), (0.14, 1.0), (0.5, 0.5)])
def test_crop_boxes_respect_scale_bounds(scale):
    g = torch.Generator().manual_seed(0)
    h, w = 375, 500
    for _ in range(500):
        top, left, ch, cw = sample_crop_box(h, w, scale, generator=g)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        frac = ch * cw / (h * w)
        # rounding of h and w to integers moves the area by at most about one row/column
        slack = (ch + cw + 1) / (h * w)
        assert scale[0] - slack <= frac <= scale[1] + slack
        assert 3 / 4 - 0.02 <= cw / ch <= 4 / 3 + 0.02


def test_parameters_reach_the_transform(monkeypatch):
    seen = []
    import swav.data.multicrop as m

    real = m.sample_crop_box

    def spy(h, w, scale, ratio=(3 / 4, 4 / 3), generator=None):
        seen.append(scale)
        return real(h, w, scale, ratio, generator)

    monkeypatch.setattr(m, "sample_crop_box", spy)
    MultiCrop(n_crops=[1, 2], sizes=[32, 16], min_scale=[0.3, 0.07], max_scale=[0.9, 0.2])(image())
    assert seen == [(0.3, 0.9), (0.07, 0.2), (0.07, 0.2)]


def test_normalisation_and_no_augmentation():
    # all photometric probabilities at zero, full-image crops: output = normalised resize
    mc = MultiCrop(
        n_crops=[1],
        sizes=[40],
        min_scale=[1.0],
        max_scale=[1.0],
        flip_prob=0,
        jitter_prob=0,
        grayscale_prob=0,
        blur_prob=0,
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
    )
    img = Image.new("RGB", (40, 40), (255, 0, 128))
    out = mc(img)[0]
    assert torch.allclose(out[0], torch.full((40, 40), 2.0))
    assert torch.allclose(out[1], torch.full((40, 40), -2.0))


def test_grayscale_always():
    mc = MultiCrop(
        n_crops=[1],
        sizes=[16],
        min_scale=[0.5],
        max_scale=[1],
        grayscale_prob=1,
        jitter_prob=0,
        blur_prob=0,
        mean=[0, 0, 0],
        std=[1, 1, 1],
    )
    out = mc(image())[0]
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])


def test_small_images_are_upscaled():
    out = MultiCrop(n_crops=[2], sizes=[64], min_scale=[0.5], max_scale=[1])(image(8, 8))
    assert out[0].shape == (3, 64, 64)


def test_invalid_config():
    with pytest.raises(ValueError, match="min_scale"):
        MultiCrop(n_crops=[2, 6], sizes=[224, 96], min_scale=[0.14], max_scale=[1, 0.14])
    with pytest.raises(ValueError, match="scale bounds"):
        MultiCropConfig(n_crops=[1], sizes=[8], min_scale=[0.5], max_scale=[0.2]).validate()
    with pytest.raises(ValueError, match="eval_size must be >= 0"):
        MultiCropConfig(eval_size=-1).validate()


def test_evaluation_size_defaults_to_the_large_crops():
    assert MultiCropConfig(sizes=[24, 12]).evaluation_size == 24
    assert MultiCropConfig(sizes=[24, 12], eval_size=32).evaluation_size == 32


def test_batched_hue_equals_torchvision():
    from torchvision.transforms.v2 import functional as TF

    from swav.data.photometric import adjust_hue

    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 17, 19, generator=g)
    x[0, :, :3] = 0.5  # grey pixels have no hue
    shift = torch.tensor([0.0, 0.1, -0.2, 0.5, -0.5])
    ref = torch.stack([TF.adjust_hue(x[i], float(shift[i])) for i in range(5)])
    assert torch.allclose(adjust_hue(x, shift), ref, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.1, 0.7, 1.3, 2.0])
def test_blur_equals_torchvision_gaussian_blur(sigma):
    from torchvision.transforms.v2 import functional as TF

    from swav.data.photometric import gaussian_blur

    x = torch.rand(3, 30, 33, generator=torch.Generator().manual_seed(1))
    radius = max(1, int(np.ceil(3 * sigma)))
    ref = TF.gaussian_blur(x, [2 * radius + 1] * 2, [sigma, sigma])
    assert torch.allclose(gaussian_blur(x, sigma), ref, atol=1e-6)


def test_blur_of_a_map_smaller_than_the_kernel_uses_the_cut_kernel():
    from swav.data.photometric import gaussian_blur

    x = torch.rand(3, 4, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sigma = 2.0  # radius 6: cut to 3 along the height (4 rows), to 6 along the width
    k = np.exp(-0.5 * (np.arange(-6, 7) / sigma) ** 2)
    ref = x.numpy()
    for axis, rr in ((2, 6), (1, 3)):
        kk = k[6 - rr : 6 + rr + 1] / k[6 - rr : 6 + rr + 1].sum()
        pad = [(0, 0)] * 3
        pad[axis] = (rr, rr)
        p = np.pad(ref, pad, mode="reflect")
        n = ref.shape[axis]
        ref = sum(kk[i] * np.take(p, range(i, i + n), axis=axis) for i in range(2 * rr + 1))
    assert np.allclose(gaussian_blur(x.float(), sigma).numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("op", [0, 1, 2, 3])
def test_each_jitter_operation_equals_torchvision(op):
    from torchvision.transforms.v2 import functional as TF

    from swav.data.photometric import color_jitter

    x = torch.rand(3, 21, 18, generator=torch.Generator().manual_seed(op))
    for f in [0.3, 1.7] if op < 3 else [-0.4, 0.25]:
        factors = [1.0, 1.0, 1.0, 0.0]
        factors[op] = f
        active = [i == op for i in range(4)]
        out = color_jitter(x.clone(), factors, [3, 2, 1, 0], active)
        ref = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue][op](
            x, f
        )
        assert torch.allclose(out, ref, atol=1e-5), (op, f)


@pytest.mark.parametrize("backend", ["pil", "tensor"])
def test_backends_agree_without_photometric_ops(backend):
    mc = MultiCrop(
        n_crops=[2, 2],
        sizes=[32, 16],
        min_scale=[0.3, 0.1],
        max_scale=[1, 0.3],
        jitter_prob=0,
        grayscale_prob=0,
        blur_prob=0,
        backend=backend,
    )
    ref = MultiCrop(
        n_crops=[2, 2],
        sizes=[32, 16],
        min_scale=[0.3, 0.1],
        max_scale=[1, 0.3],
        jitter_prob=0,
        grayscale_prob=0,
        blur_prob=0,
        backend="tensor",
    )
    a = mc(image(), torch.Generator().manual_seed(3))
    b = ref(image(), torch.Generator().manual_seed(3))
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a, b))


@pytest.mark.parametrize("backend", ["pil", "tensor"])
def test_jitter_changes_colour_statistics_alike(backend):
    # brightness only, factor in [0.5, 1.5]: mean intensity ratio within that range
    mc = MultiCrop(
        n_crops=[8],
        sizes=[16],
        min_scale=[1.0],
        max_scale=[1.0],
        flip_prob=0,
        jitter=[0.5, 0, 0, 0],
        jitter_prob=1,
        grayscale_prob=0,
        blur_prob=0,
        mean=[0, 0, 0],
        std=[1, 1, 1],
        backend=backend,
    )
    img = Image.new("RGB", (16, 16), (100, 100, 100))
    out = torch.stack(mc(img, torch.Generator().manual_seed(0)))
    ratios = out.mean(dim=(1, 2, 3)) / (100 / 255)
    assert ratios.min() >= 0.49 and ratios.max() <= 1.51 and ratios.std() > 0.05


def test_crops_of_the_pipeline_respect_configured_scale_and_size(monkeypatch):
    import swav.data.multicrop as m

    boxes = []
    real = m.TF.resized_crop

    def spy(img, top, left, h, w, size, antialias=True):
        boxes.append((top, left, h, w, tuple(size)))
        return real(img, top, left, h, w, size, antialias=antialias)

    monkeypatch.setattr(m.TF, "resized_crop", spy)
    cfg = dict(n_crops=[2, 6], sizes=[56, 24], min_scale=[0.14, 0.05], max_scale=[1.0, 0.14])
    mc = MultiCrop(**cfg)
    g = torch.Generator().manual_seed(0)
    H, W = 75, 100
    img = image(H, W)
    for _ in range(40):
        crops = mc(img, g)
        assert [tuple(c.shape) for c in crops] == [(3, 56, 56)] * 2 + [(3, 24, 24)] * 6
    assert len(boxes) == 40 * 8
    for i, (top, left, h, w, size) in enumerate(boxes):
        group = 0 if i % 8 < 2 else 1
        assert size == (cfg["sizes"][group],) * 2
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
        slack = (h + w + 1) / (H * W)
        frac = h * w / (H * W)
        assert cfg["min_scale"][group] - slack <= frac <= cfg["max_scale"][group] + slack


def test_device_option_runs_the_same_pipeline():
    kw = dict(n_crops=[1, 2], sizes=[32, 16], min_scale=[0.3, 0.1], max_scale=[1, 0.3])
    on_device = MultiCrop(device="cpu", backend="pil", **kw)
    assert on_device.config.backend == "tensor"  # a device implies the tensor backend
    a = on_device(image(), torch.Generator().manual_seed(4))
    b = MultiCrop(**kw)(image(), torch.Generator().manual_seed(4))
    assert all(x.device.type == "cpu" and torch.equal(x, y) for x, y in zip(a, b))


def smooth_image(h, w, seed):
    """A uint8 image without pixel-level noise, so that two resampling filters agree closely."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, h // 12), max(2, w // 12), generator=g)
    big = torch.nn.functional.interpolate(coarse, (h, w), mode="bicubic", align_corners=False)
    return (big[0].clamp(0, 1) * 255).round().to(torch.uint8)


def test_batched_photometric_equals_per_crop_operations():
    from swav.data.photometric import photometric_batch

    mc = MultiCrop(blur_prob=0.6, grayscale_prob=0.3)
    g = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (48, 3, 20, 20), dtype=torch.uint8, generator=g)
    _, steps = mc._draw_group(100, 100, 48, (0.1, 1.0), g)
    # every kind of step occurs: flips, each jitter operation at each position, grey, blur
    assert {s["flip"] for s in steps} == {True, False}
    assert {s["gray"] for s in steps} == {True, False}
    assert {s["sigma"] is None for s in steps} == {True, False}
    orders = [s["jitter"][1] for s in steps if s["jitter"] is not None]
    assert {(p, o[p]) for o in orders for p in range(4)} == {
        (p, op) for p in range(4) for op in range(4)
    }
    expected = torch.stack([mc._photometric(c, **s) for c, s in zip(crops, steps)])
    got = photometric_batch(crops.float() / 255, steps, mc._active)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(3, 7), (20, 20)])
def test_batched_blur_equals_per_image_blur(size):
    from swav.data.photometric import gaussian_blur, gaussian_blur_batch

    x = torch.rand(5, 3, *size, generator=torch.Generator().manual_seed(1))
    sigmas = [0.1, 0.5, 1.0, 2.0, 1.5]  # radii 1 to 6, cut to the map where it is smaller
    expected = torch.stack([gaussian_blur(a, s) for a, s in zip(x, sigmas)])
    torch.testing.assert_close(gaussian_blur_batch(x, sigmas), expected, atol=1e-6, rtol=0)


def test_batch_draws_the_parameters_of_the_per_image_pipeline():
    kw = dict(n_crops=[2, 3], sizes=[48, 24], min_scale=[0.3, 0.05], max_scale=[1, 0.3])
    mc = MultiCrop(**kw)
    images = [smooth_image(120, 90, 1), smooth_image(64, 200, 2), smooth_image(96, 96, 3)]

    def gens():
        return [torch.Generator().manual_seed(s) for s in (11, 12, 13)]

    batched = mc.batch(images, gens())
    per_image = [mc(img, g) for img, g in zip(images, gens())]
    assert [tuple(b.shape) for b in batched] == [(3, 3, 48, 48)] * 2 + [(3, 3, 24, 24)] * 3
    for v, b in enumerate(batched):
        reference = torch.stack([crops[v] for crops in per_image])
        # the same boxes and photometric steps; only the resampling filter differs
        assert (b - reference).abs().mean() < 0.02, v
    other = mc.batch(images, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    assert (other[0] - batched[0]).abs().mean() > 0.1


def test_batch_resampling_is_close_to_the_antialiased_resize():
    import torchvision.transforms.v2.functional as TF
    from torchvision.ops import roi_align

    img = smooth_image(150, 200, 4)
    for top, left, h, w, size in [(10, 20, 120, 160, 48), (5, 7, 30, 20, 64), (0, 0, 150, 200, 96)]:
        box = torch.tensor([[left, top, left + w, top + h]], dtype=torch.float32)
        ours = roi_align(img[None].float(), [box], size, 1.0, -1, aligned=True)[0]
        ref = TF.resized_crop(img.float(), top, left, h, w, [size, size], antialias=True)
        assert (ours - ref).abs().mean() < 2.0, (top, left, h, w, size)  # of 255
    # a box of exactly the output size samples the pixel centres: the crop itself
    box = torch.tensor([[7, 5, 7 + 32, 5 + 32]], dtype=torch.float32)
    out = roi_align(img[None].float(), [box], 32, 1.0, -1, aligned=True)[0]
    torch.testing.assert_close(out, img[:, 5:37, 7:39].float())


def test_batch_on_the_configured_device_and_bad_calls():
    mc = MultiCrop(
        device="cpu", n_crops=[1, 1], sizes=[16, 8], min_scale=[0.5, 0.1], max_scale=[1, 0.5]
    )
    out = mc.batch([smooth_image(30, 40, 5), smooth_image(10, 12, 6)])
    assert [tuple(o.shape) for o in out] == [(2, 3, 16, 16), (2, 3, 8, 8)]
    assert all(torch.isfinite(o).all() for o in out)
    with pytest.raises(ValueError, match="generators"):
        mc.batch([smooth_image(30, 40, 5)], [None, None])
    with pytest.raises(ValueError, match="uint8"):
        mc.batch([smooth_image(30, 40, 5).float() / 255])
    with pytest.raises(ValueError, match="at least one"):
        mc.batch([])
    from_pil = mc.batch([image(30, 40)], [torch.Generator().manual_seed(0)])
    from_tensor = mc.batch(
        [torch.from_numpy(np.array(image(30, 40))).permute(2, 0, 1)],
        [torch.Generator().manual_seed(0)],
    )
    assert all(torch.equal(a, b) for a, b in zip(from_pil, from_tensor))
    with pytest.raises(ValueError, match="on_device"):
        MultiCropConfig(on_device=True, backend="pil").validate()


def test_decode_only_loader_feeds_the_batched_path_across_worker_processes():
    from swav.data.images import load_rgb
    from swav.data.loader import Decoded, EpochSampler, MultiCropDataset, make_loader, sample_seed
    from swav.data.sources import digits_source

    source = digits_source("train")
    mc = MultiCrop(n_crops=[1, 2], sizes=[16, 8], min_scale=[0.5, 0.2], max_scale=[1, 0.5])
    sampler = EpochSampler(len(source), 4, seed=3, max_batches=2)
    decoded = make_loader(MultiCropDataset(source, mc, decode_only=True), sampler, 4, workers=1)
    batches = 0
    for images, labels, indices, bad in decoded:
        batches += 1
        assert not bad and len(images) == 4
        assert all(isinstance(d, Decoded) and d.image.dtype == torch.uint8 for d in images)
        for d, i, label in zip(images, indices.tolist(), labels.tolist()):
            item, expected_label = source[i]
            assert label == expected_label and d.seed == sample_seed(3, 0, i)
            assert torch.equal(d.image, to_uint8_tensor(load_rgb(item)))
        batched = mc.batch([d.image for d in images], [d.generator() for d in images])
        again = mc.batch([d.image for d in images], [d.generator() for d in images])
        assert [tuple(b.shape) for b in batched] == [(4, 3, 16, 16)] + [(4, 3, 8, 8)] * 2
        assert all(torch.equal(x, y) for x, y in zip(batched, again))
    assert batches == 2


@pytest.mark.parametrize("backend", ["tensor", "pil"])
def test_uint8_crops_normalise_on_the_device_to_the_float_crops(backend):
    mc = MultiCrop(
        n_crops=[2, 3], sizes=[32, 16], min_scale=[0.3, 0.1], max_scale=[1, 0.3], backend=backend
    )
    floats = mc(image(), torch.Generator().manual_seed(4))
    small = mc(image(), torch.Generator().manual_seed(4), as_uint8=True)
    assert all(c.dtype == torch.uint8 for c in small)
    assert sum(c.nbytes for c in small) * 4 == sum(c.nbytes for c in floats)
    std = torch.tensor(mc.config.std).view(3, 1, 1)
    for f, u in zip(floats, small):
        back = mc.normalize(u[None])[0]
        # rounding to 256 levels moves a value by at most half a level, in units of the std
        limit = 0.5 / 255 / std + 1e-6
        assert ((back - f).abs() <= limit).all()
        if backend == "pil":  # Pillow's operations give uint8 already: no rounding at all
            assert torch.allclose(back, f, atol=1e-6)
    assert mc.normalize(floats[0]) is floats[0]


def test_the_loader_ships_uint8_and_training_normalises_them():
    from swav.data.loader import EpochSampler, MultiCropDataset, make_loader
    from swav.data.sources import digits_source

    source = digits_source("train")
    mc = MultiCrop(n_crops=[1, 2], sizes=[16, 8], min_scale=[0.5, 0.2], max_scale=[1, 0.5])
    sampler = EpochSampler(len(source), 4, seed=3, max_batches=2)
    as_float = list(make_loader(MultiCropDataset(source, mc), sampler, 4, workers=0))
    as_uint8 = list(make_loader(MultiCropDataset(source, mc, as_uint8=True), sampler, 4, 1))
    for (f, *_), (u, *_) in zip(as_float, as_uint8):
        assert all(c.dtype == torch.uint8 for c in u)
        for a, b in zip(f, u):
            assert (mc.normalize(b) - a).abs().max() < 0.5 / 255 / min(mc.config.std) + 1e-6


def test_jpegs_can_leave_the_workers_undecoded_and_be_decoded_as_a_batch(tmp_path):
    from swav.data.images import load_rgb
    from swav.data.loader import (
        Decoded,
        Encoded,
        EpochSampler,
        MultiCropDataset,
        collate_crops,
        decode_batch,
    )
    from swav.data.sources import folder_source

    rng = np.random.default_rng(0)
    for i in range(5):
        arr = rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{i}.jpg", quality=95)
    Image.fromarray(arr).save(tmp_path / "5.png")
    good = (tmp_path / "0.jpg").read_bytes()
    (tmp_path / "6.jpg").write_bytes(good[: len(good) // 3])  # cut short: fails to decode
    source = folder_source(tmp_path)
    mc = MultiCrop(n_crops=[1], sizes=[8], min_scale=[0.5], max_scale=[1.0])
    ds = MultiCropDataset(source, mc, decode_only=True, jpeg_on_device=True)
    sampler = EpochSampler(len(source), 7, seed=2)
    items = [ds[key] for key in sampler]
    crops, _, indices, bad = collate_crops(items)
    assert not bad and len(crops) == 7
    kinds = {source.names[i]: type(c) for c, i in zip(crops, indices.tolist())}
    assert kinds["5.png"] is Decoded and kinds["3.jpg"] is Encoded
    images, kept, failed = decode_batch(crops, "cpu")
    assert failed == ["6.jpg"] and len(images) == len(kept) == 6
    for img, k in zip(images, kept):
        expected = to_uint8_tensor(load_rgb(source[indices[k]][0]))
        # libjpeg's and Pillow's decoders may round a few pixel values differently
        assert img.shape == expected.shape and (img.int() - expected.int()).abs().max() <= 2
    again = mc.batch(images, [crops[k].generator() for k in kept])
    assert again[0].shape == (6, 3, 8, 8)
