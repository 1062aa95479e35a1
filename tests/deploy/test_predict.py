"""``senet.deploy.predict`` and ``senet predict``: image decoding of every common kind, top-k against an
independent forward pass, batching, failures reported by path, the CLI's formats and exit statuses.

Images are written on the fly with PIL; the networks are CIFAR ResNet-20s a few thousand parameters wide.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision.transforms import v2

import senet
from senet.cli import main
from senet.data.transforms import Preprocessing
from senet.deploy.predict import Prediction, UnreadableImageError, load_image, predict
from senet.weights.info import WeightsInfo, save_weights_file

TINY = {"widths": [4, 8, 8]}
LABELS = ["cat", "dog", "eel"]
RGB_PRE = Preprocessing((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 32, 1.0, "bilinear")
GREY_PRE = Preprocessing((0.5,), (0.25,), 32, 1.0, "bilinear")


def _weights(path: Path, in_chans: int, labels: list[str] | None) -> Path:
    torch.manual_seed(in_chans)
    model = senet.create_model("resnet20_cifar", num_classes=3, in_chans=in_chans, **TINY)
    # Random BatchNorm statistics, so that the untrained network's outputs differ from image to image.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    info = WeightsInfo(
        model="resnet20_cifar",
        options={"in_chans": in_chans, **TINY},
        num_classes=3,
        preprocessing=RGB_PRE if in_chans == 3 else GREY_PRE,
        labels=labels,
    )
    return save_weights_file(path, model.state_dict(), info)


@pytest.fixture(scope="module")
def rgb_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class RGB network saved with its record (labels cat, dog, eel)."""
    return _weights(tmp_path_factory.mktemp("w") / "rgb.safetensors", 3, LABELS)


@pytest.fixture(scope="module")
def grey_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class network of one input channel (as trained on the digits), without labels."""
    return _weights(tmp_path_factory.mktemp("w") / "grey.safetensors", 1, None)


def _noise(path: Path, seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Path:
    """A random image of ``size`` = (width, height), saved in the format of ``path``'s extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode).save(path)
    return path


def _by_hand(resize: int, crop: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """The evaluation transform written out with torchvision's own ops, as torchvision's and timm's presets
    apply it: the shorter side resized (uint8, bilinear, antialiased), a centre crop, [0, 1], normalised."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(resize, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(crop),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def _reference(weights: Path, image: Image.Image, k: int) -> tuple[list[float], list[int]]:
    """Top-k by hand: the loaded network in eval mode on the transform of RGB_PRE / GREY_PRE written out
    (mean 0.5, std 0.25, 32 x 32 from a shorter side of 32), independent of the
    recorded preprocessing's code."""
    model = senet.load_pretrained(weights).eval()
    grey = image.mode == "L"
    transform = _by_hand(32, 32, (0.5,) if grey else (0.5, 0.5, 0.5), (0.25,) if grey else (0.25, 0.25, 0.25))
    with torch.no_grad():
        probs, indices = model(transform(image)[None]).softmax(1).topk(k)
    return probs[0].tolist(), indices[0].tolist()


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


# ----------------------------------------------------------------------------------------- decoding


def test_greyscale_is_replicated_for_rgb_and_kept_for_grey_networks(tmp_path):
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (5, 1))  # 32 x 5, a horizontal ramp
    Image.fromarray(grey).save(tmp_path / "l.png")
    rgb = load_image(tmp_path / "l.png", 3)
    assert rgb.mode == "RGB" and rgb.size == (32, 5)
    assert all((_pixels(rgb)[..., c] == grey).all() for c in range(3))
    alone = load_image(tmp_path / "l.png", 1)
    assert alone.mode == "L" and (_pixels(alone) == grey).all()


def test_palette_images_are_looked_up_and_transparency_composited_onto_white(tmp_path):
    palette = [0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * (3 * 253)  # index 0 black, 1 red, 2 green
    index = np.array([[0, 1, 2, 1], [2, 1, 0, 0]], dtype=np.uint8)
    image = Image.new("P", (4, 2))
    image.putdata(index.ravel().tolist())
    image.putpalette(palette)
    image.save(tmp_path / "p.png")
    image.save(tmp_path / "pt.png", transparency=0)  # index 0 transparent (a tRNS chunk)
    table = np.array(palette).reshape(-1, 3)
    assert (_pixels(load_image(tmp_path / "p.png")) == table[index]).all()
    expected = table[index].copy()
    expected[index == 0] = 255  # transparent black shows as the white it is drawn on
    loaded = load_image(tmp_path / "pt.png")
    assert loaded.mode == "RGB" and (_pixels(loaded) == expected).all()


def test_alpha_is_composited_onto_white(tmp_path):
    colour, alpha = np.array([200, 40, 0]), np.array([0, 128, 255])
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, :, :3], rgba[0, :, 3] = colour, alpha  # one colour at three opacities
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    la = np.stack([np.full(3, 60), alpha], axis=-1)[None].astype(np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    a = alpha[:, None] / 255
    want_rgb = colour[None] * a + 255 * (1 - a)
    want_grey = 60 * a[:, 0] + 255 * (1 - a[:, 0])
    assert np.abs(_pixels(load_image(tmp_path / "rgba.png"))[0] - want_rgb).max() <= 1
    la_rgb = _pixels(load_image(tmp_path / "la.png"))[0]
    assert (la_rgb == la_rgb[:, :1]).all() and np.abs(la_rgb[:, 0] - want_grey).max() <= 1
    assert np.abs(_pixels(load_image(tmp_path / "la.png", 1))[0] - want_grey).max() <= 1


@pytest.mark.parametrize("suffix", [".tif", ".jpg"])
def test_cmyk_becomes_rgb(tmp_path, suffix):
    cmyk = np.zeros((16, 80, 4), dtype=np.uint8)  # five flat blocks: cyan, magenta, yellow, black, white
    for channel in range(4):
        cmyk[:, 16 * channel : 16 * channel + 16, channel] = 255
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / f"c{suffix}")
    loaded = load_image(tmp_path / f"c{suffix}")
    assert loaded.mode == "RGB" and loaded.size == (80, 16)
    centres = _pixels(loaded)[8, 8::16]
    want = [[0, 255, 255], [255, 0, 255], [255, 255, 0], [0, 0, 0], [255, 255, 255]]
    assert np.abs(centres - np.array(want)).max() <= 8  # JPEG's blocks blur a little


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16)
    ramp[1], ramp[2] = 32768, 257  # exact points: half way, and one 8-bit step
    values = np.tile(ramp, (3, 1))
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    big_endian = Image.fromarray(values.astype(">u2"))
    assert big_endian.mode == "I;16B"
    big_endian.save(tmp_path / "g16b.tif")
    for name in ("g16.png", "g16b.tif"):
        loaded = _pixels(load_image(tmp_path / name, 1))
        assert (
            loaded[0, -1] == 255 and abs(loaded[0, 1] - 128) <= 1 and loaded[0, 2] == 1 and loaded[0, 0] == 0
        )
        assert np.abs(loaded - values / 257).max() <= 0.5 + 1e-9  # rounded, every pixel


def test_32_bit_pixels_without_an_8_bit_meaning_are_refused_by_path(tmp_path):
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "i32.tif")
    Image.fromarray(np.zeros((2, 2), dtype=np.float32)).save(tmp_path / "f32.tif")
    with pytest.raises(UnreadableImageError, match=r"i32\.tif: mode I pixels span 0\.\.70000"):
        load_image(tmp_path / "i32.tif")
    with pytest.raises(UnreadableImageError, match=r"f32\.tif: 32-bit float pixels"):
        load_image(tmp_path / "f32.tif")


def test_one_bit_and_one_pixel_images(tmp_path):
    bits = np.array([[1, 0, 1], [0, 1, 0]], dtype=bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    loaded = load_image(tmp_path / "b.png")
    assert loaded.mode == "RGB" and (_pixels(loaded) == np.where(bits, 255, 0)[..., None]).all()
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "one.png")
    assert load_image(tmp_path / "one.png").getpixel((0, 0)) == (10, 20, 30)


@pytest.mark.parametrize(("orientation", "corner"), [(6, "top-right"), (8, "bottom-left")])
def test_exif_orientation_is_applied(tmp_path, orientation, corner):
    stored = np.zeros((40, 80, 3), dtype=np.uint8)  # 80 wide, 40 tall, red 16 x 16 at the stored top-left
    stored[:16, :16] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: turn 90 degrees clockwise to show; 8: counter-clockwise
    Image.fromarray(stored).save(tmp_path / "o.jpg", exif=exif, quality=95)
    loaded = _pixels(load_image(tmp_path / "o.jpg"))
    assert loaded.shape == (80, 40, 3)  # shown portrait
    red = {"top-right": loaded[8, -8], "bottom-left": loaded[-8, 8]}[corner]
    assert red[0] > 200 and red[1:].max() < 60
    others = [loaded[8, 8], loaded[-8, -8], loaded[8, -8] if corner != "top-right" else loaded[-8, 8]]
    assert all(p.max() < 60 for p in others)


def test_unreadable_files_raise_one_line_naming_path_and_cause(tmp_path, monkeypatch):
    (tmp_path / "text.jpg").write_text("not an image at all\n")
    for suffix in (".jpg", ".png"):
        data = (_noise(tmp_path / f"whole{suffix}", 1, (64, 64))).read_bytes()
        (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match=r"text\.jpg: not an image"):
        load_image(tmp_path / "text.jpg")
    for suffix in (".jpg", ".png"):
        with pytest.raises(UnreadableImageError, match=rf"cut\{suffix}: truncated") as caught:
            load_image(tmp_path / f"cut{suffix}")
        assert "\n" not in str(caught.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nobody turned truncation into grey pixels
    # Above MAX_IMAGE_PIXELS PIL only warns, above twice it raises: both are refused, only for this load.
    _noise(tmp_path / "warn.png", 2, (15, 10))
    _noise(tmp_path / "error.png", 3, (20, 20))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for name in ("warn.png", "error.png"):
        with pytest.raises(UnreadableImageError, match=rf"{name}: refused as a possible decompression bomb"):
            load_image(tmp_path / name)
    assert load_image(_noise(tmp_path / "small.png", 4, (8, 8))).size == (8, 8)
    with pytest.warns(Image.DecompressionBombWarning):  # the filter was only ours for the load
        Image.open(tmp_path / "warn.png")


# --------------------------------------------------------------------------------------- prediction


def test_top_k_matches_an_independent_forward_pass(rgb_weights, tmp_path):
    paths = [_noise(tmp_path / f"{k}.png", k) for k in range(3)]
    results = list(predict(rgb_weights, paths, topk=2, device="cpu"))
    assert [r.path for r in results] == [str(p) for p in paths]
    for path, result in zip(paths, results, strict=True):
        probs, indices = _reference(rgb_weights, Image.open(path).convert("RGB"), 2)
        assert [s.index for s in result.top] == indices
        assert [s.label for s in result.top] == [LABELS[i] for i in indices]
        assert np.allclose([s.prob for s in result.top], probs, atol=1e-5)
    assert len({r.top[0].prob for r in results}) == 3  # the images are told apart: not a constant output


def test_all_classes_sum_to_one_in_descending_order_and_topk_is_capped(rgb_weights, tmp_path):
    (result,) = predict(rgb_weights, _noise(tmp_path / "a.png", 5), topk=10, device="cpu")
    probs = [s.prob for s in result.top]
    assert len(result.top) == 3 and sorted(s.index for s in result.top) == [0, 1, 2]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5


def test_batches_give_the_same_results_as_single_images_in_input_order(rgb_weights, tmp_path):
    paths = [_noise(tmp_path / f"{k}.jpg", 10 + k, (30 + 7 * k, 40)) for k in range(5)]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG nonsense")
    inputs = [paths[0], tmp_path / "bad.png", *paths[1:3], tmp_path / "missing.jpg", *paths[3:]]
    one = list(predict(rgb_weights, inputs, topk=3, batch_size=1, device="cpu"))
    two = list(predict(rgb_weights, inputs, topk=3, batch_size=2, device="cpu"))
    assert [r.path for r in one] == [r.path for r in two] == [str(p) for p in inputs]
    assert [r.ok for r in two] == [True, False, True, True, False, True, True]
    for a, b in zip(one, two, strict=True):
        assert [s.index for s in a.top] == [s.index for s in b.top] and a.error == b.error
        assert np.allclose([s.prob for s in a.top], [s.prob for s in b.top], atol=1e-6, rtol=0)


def test_bad_files_are_reported_by_path_and_the_others_predicted(rgb_weights, tmp_path, monkeypatch):
    good = [_noise(tmp_path / f"good{k}.png", 20 + k, (8, 8)) for k in range(2)]
    (tmp_path / "text.jpg").write_text("hello")
    data = _noise(tmp_path / "whole.jpg", 30, (24, 24)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    bomb = _noise(tmp_path / "bomb.png", 31, (48, 48))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the others stay below it
    inputs = [good[0], tmp_path / "text.jpg", tmp_path / "cut.jpg", bomb, good[1]]
    results = {r.path: r for r in predict(rgb_weights, inputs, device="cpu")}
    assert results[str(good[0])].ok and results[str(good[1])].ok
    assert results[str(tmp_path / "text.jpg")].error.startswith("not an image")
    assert results[str(tmp_path / "cut.jpg")].error.startswith("truncated image")
    assert "decompression bomb" in results[str(bomb)].error


def test_a_grey_network_is_fed_luma_of_a_colour_image(grey_weights, tmp_path):
    path = _noise(tmp_path / "colour.png", 40)
    assert load_image(path, 1).mode == "L"
    (result,) = predict(grey_weights, [path], topk=3, device="cpu")
    # ITU-R 601 luma by hand, independent of PIL's conversion (PIL rounds the same weighted sum).
    rgb = np.asarray(Image.open(path)).astype(np.float64)
    luma = np.floor(rgb @ np.array([0.299, 0.587, 0.114]) + 0.5).clip(0, 255).astype(np.uint8)
    probs, indices = _reference(grey_weights, Image.fromarray(luma), 3)
    assert [s.index for s in result.top] == indices
    assert [s.label for s in result.top] == [str(i) for i in indices]  # no labels recorded: the indices
    assert np.allclose([s.prob for s in result.top], probs, atol=1e-4)


def test_labels_file_wins_and_a_wrong_count_is_refused_before_any_image(rgb_weights, tmp_path):
    path = _noise(tmp_path / "a.png", 50)
    (tmp_path / "labels.txt").write_text("ant\nbee\ncow\n\n")  # a trailing blank line is no label
    (result,) = predict(rgb_weights, path, labels=tmp_path / "labels.txt", device="cpu")
    assert [s.label for s in result.top] == [["ant", "bee", "cow"][s.index] for s in result.top]
    (tmp_path / "two.txt").write_text("ant\nbee\n")
    with pytest.raises(ValueError, match=r"two\.txt has 2 labels; the network has 3 classes"):
        predict(rgb_weights, path, labels=tmp_path / "two.txt")
    with pytest.raises(ValueError, match="topk must be an integer >= 1"):
        predict(rgb_weights, path, topk=0)


def test_a_module_from_load_pretrained_is_accepted_and_keeps_its_mode(rgb_weights, tmp_path):
    model = senet.load_pretrained(rgb_weights)
    (result,) = predict(model, _noise(tmp_path / "a.png", 60), device="cpu")
    assert isinstance(result, Prediction) and result.ok and model.training
    with pytest.raises(ValueError, match="pretrained_info"):
        predict(senet.create_model("resnet20_cifar", num_classes=3, **TINY), tmp_path)


def test_an_optimized_network_keeps_its_record_and_predicts_as_the_eager_one(rgb_weights, tmp_path):
    paths = [_noise(tmp_path / f"{k}.png", 65 + k) for k in range(2)]
    optimized = senet.optimize_for_inference(senet.load_pretrained(rgb_weights), compile=False)
    fast = list(predict(optimized, paths, topk=3, device="cpu"))
    for path, result in zip(paths, fast, strict=True):
        probs, indices = _reference(rgb_weights, Image.open(path).convert("RGB"), 3)
        assert [s.index for s in result.top] == indices and [s.label for s in result.top] == [
            LABELS[i] for i in indices
        ]
        assert np.allclose([s.prob for s in result.top], probs, atol=1e-5)


# --------------------------------------------------------------------------------------------- CLI


def test_cli_table_and_jsonl(rgb_weights, tmp_path, capsys):
    paths = [_noise(tmp_path / f"{k}.png", 70 + k) for k in range(2)]
    expected = list(predict(rgb_weights, paths, topk=2, device="cpu"))
    assert main(["predict", "--checkpoint", str(rgb_weights), *map(str, paths), "--topk", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    want = []
    for result in expected:
        want += [result.path, *(f"  {100 * s.prob:5.2f}%  {s.label}" for s in result.top)]
    assert table == want
    assert main(["predict", "--checkpoint", str(rgb_weights), *map(str, paths), "--format", "jsonl"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in paths]
    for record, result in zip(records, expected, strict=True):
        top = record["top"]
        assert len(top) == 3 and [t["index"] for t in top[:2]] == [s.index for s in result.top]
        assert all(t["label"] == LABELS[t["index"]] for t in top)
        assert abs(top[0]["prob"] - result.top[0].prob) < 1e-6 and abs(sum(t["prob"] for t in top) - 1) < 1e-5


def test_cli_reports_skipped_files_on_stderr_and_goes_on(rgb_weights, tmp_path, capsys):
    good = _noise(tmp_path / "good.png", 80)
    (tmp_path / "text.jpg").write_text("hello")
    argv = [
        "predict",
        "--checkpoint",
        str(rgb_weights),
        str(tmp_path / "text.jpg"),
        str(good),
        "--format",
        "jsonl",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert records[0] == {
        "path": str(tmp_path / "text.jpg"),
        "error": "not an image (or of a format PIL cannot read)",
    }
    assert records[1]["path"] == str(good) and len(records[1]["top"]) == 3
    assert (
        captured.err
        == f"senet predict: skipped {tmp_path / 'text.jpg'}: not an image (or of a format PIL cannot read)\n"
    )


def test_cli_searches_directories_recursively_in_sorted_order(rgb_weights, tmp_path, capsys):
    root = tmp_path / "photos"
    files = [
        _noise(root / "b.png", 90),
        _noise(root / "a" / "z.JPG", 91),
        _noise(root / "a" / "deep" / "y.webp", 92),
    ]
    (root / "notes.txt").write_text("not an image, and not named like one: not tried")
    assert main(["predict", "--checkpoint", str(rgb_weights), str(root), "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    paths = [json.loads(line)["path"] for line in captured.out.splitlines()]
    assert paths == [str(root / "a" / "deep" / "y.webp"), str(root / "a" / "z.JPG"), str(root / "b.png")]
    assert sorted(paths) == sorted(map(str, files)) and captured.err == ""  # no bar: stderr is no terminal


def test_cli_bad_labels_and_nothing_predictable_exit_2_with_one_line(rgb_weights, tmp_path, capsys):
    good = _noise(tmp_path / "good.png", 100)
    (tmp_path / "labels.txt").write_text("one\ntwo\n")
    argv = ["predict", "--checkpoint", str(rgb_weights), str(good), "--labels", str(tmp_path / "labels.txt")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "senet predict: error: labels file" in captured.err and "has 2 labels" in captured.err
    missing = [str(tmp_path / "nope.png"), str(tmp_path / "gone")]
    assert main(["predict", "--checkpoint", str(rgb_weights), *missing]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == [f"senet predict: skipped {m}: no such file or directory" for m in missing]
    assert err[2:] == ["senet predict: error: none of the 2 inputs could be predicted (each is named above)"]
    with pytest.raises(SystemExit) as stopped:
        main(["predict", "--checkpoint", str(rgb_weights), str(good), "--topk", "0"])
    assert stopped.value.code == 2


def test_cli_predicts_with_a_run_directory_of_senet_train(tmp_path, make_folder, capsys):
    from senet.train import TrainConfig, train

    root = make_folder(classes=("ant", "bee"), per_class=2)
    run = tmp_path / "run"
    config = TrainConfig(
        model="resnet20_cifar",
        model_options=TINY,
        data=str(root),
        image_size=32,
        epochs=1,
        batch_size=4,
        output=str(run),
        log_interval=0,
        device="cpu",
    )
    train(config)
    capsys.readouterr()
    image = root / "val" / "bee" / "0.jpg"
    for weights in ("last", "best"):
        argv = ["predict", "--checkpoint", str(run), str(image), "--weights", weights, "--format", "jsonl"]
        assert main(argv) == 0
        (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        model = senet.load_pretrained(run, weights=weights).eval()
        # The run recorded its data's evaluation transform: ImageNet statistics, a resize then a centre crop.
        pre = model.pretrained_info.preprocessing
        assert pre.mean == (0.485, 0.456, 0.406) and pre.input_size == 32 and pre.crop_fraction == 0.875
        # ImageNet statistics, shorter side round(32 / 0.875) = 37, centre crop 32.
        transform = _by_hand(37, 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        with torch.no_grad():
            probs = model(transform(Image.open(image).convert("RGB"))[None]).softmax(1)[0]
        assert [t["label"] for t in record["top"]] == [["ant", "bee"][t["index"]] for t in record["top"]]
        assert all(abs(t["prob"] - probs[t["index"]].item()) < 1e-5 for t in record["top"])
