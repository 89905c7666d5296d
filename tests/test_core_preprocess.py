"""Preprocessing against values computed by hand, for each scaling, layout and dtype."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from flowerdemo.core.model_spec import ModelSpec
from flowerdemo.core.preprocess import (
    PreprocessError,
    PreprocessOptions,
    TensorCache,
    fit,
    payload_bytes,
    preprocess,
    resolve_scaling,
)

SPEC = ModelSpec(
    name="m",
    version="1",
    platform="python",
    input_name="input",
    output_name="probabilities",
    layout="NCHW",
    input_dtype="FP32",
    channels=3,
    height=2,
    width=2,
    max_batch_size=8,
    num_classes=102,
    has_labels=True,
)
# A 2x2 photo already at the model's size, so only the scaling and the layout act on it.
PIXELS = np.array([[[0, 10, 20], [30, 40, 50]], [[60, 70, 80], [255, 128, 1]]], dtype=np.uint8)
PHOTO = Image.fromarray(PIXELS, "RGB")


@pytest.mark.parametrize(
    ("scaling", "expected_first_pixel"),
    [
        ("none", [0.0, 10.0, 20.0]),
        ("inception", [-1.0, 10 / 127.5 - 1, 20 / 127.5 - 1]),
        ("vgg", [0 - 123.0, 10 - 117.0, 20 - 104.0]),
        ("imagenet", [(0 - 0.485) / 0.229, (10 / 255 - 0.456) / 0.224, (20 / 255 - 0.406) / 0.225]),
    ],
)
def test_each_scaling_matches_hand_computed_values(scaling, expected_first_pixel):
    tensor = preprocess(PHOTO, SPEC, PreprocessOptions(scaling=scaling))
    assert tensor.shape == (3, 2, 2)
    assert tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[:, 0, 0], expected_first_pixel, rtol=1e-6)


def test_nchw_and_nhwc_put_the_same_values_in_their_places():
    nhwc = dataclasses.replace(SPEC, layout="NHWC")
    chw = preprocess(PHOTO, SPEC, PreprocessOptions(scaling="none"))
    hwc = preprocess(PHOTO, nhwc, PreprocessOptions(scaling="none"))
    assert hwc.shape == (2, 2, 3)
    np.testing.assert_array_equal(hwc, PIXELS.astype(np.float32))
    np.testing.assert_array_equal(chw, np.transpose(PIXELS, (2, 0, 1)).astype(np.float32))


def test_fp16_and_uint8_inputs():
    half = preprocess(PHOTO, dataclasses.replace(SPEC, input_dtype="FP16"), PreprocessOptions())
    assert half.dtype == np.float16
    np.testing.assert_allclose(half[:, 1, 1], [1.0, 128 / 127.5 - 1, 1 / 127.5 - 1], atol=1e-3)
    raw = preprocess(
        PHOTO, dataclasses.replace(SPEC, input_dtype="UINT8"), PreprocessOptions(scaling="none")
    )
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw, np.transpose(PIXELS, (2, 0, 1)))
    with pytest.raises(ValueError, match="UINT8"):
        preprocess(
            PHOTO, dataclasses.replace(SPEC, input_dtype="UINT8"), PreprocessOptions(scaling="vgg")
        )


def test_grayscale_model_gets_one_channel():
    gray = preprocess(
        PHOTO, dataclasses.replace(SPEC, channels=1), PreprocessOptions(scaling="none")
    )
    assert gray.shape == (1, 2, 2)
    # ITU-R 601-2 luma, as Pillow converts: L = R*299/1000 + G*587/1000 + B*114/1000
    assert gray[0, 1, 0] == pytest.approx(60 * 0.299 + 70 * 0.587 + 80 * 0.114, abs=1)


def test_crop_keeps_the_centre_and_stretch_keeps_everything():
    # A 30x10 photo: left third red, middle green, right blue.
    strip = np.zeros((10, 30, 3), np.uint8)
    strip[:, :10, 0] = 255
    strip[:, 10:20, 1] = 255
    strip[:, 20:, 2] = 255
    photo = Image.fromarray(strip)
    cropped = np.asarray(fit(photo, 10, 10, "crop"))
    assert cropped.shape == (10, 10, 3)
    assert (cropped[:, :, 1] == 255).all() and (cropped[:, :, 0] == 0).all()
    stretched = np.asarray(fit(photo, 10, 10, "stretch"))
    assert stretched[5, 0, 0] == 255 and stretched[5, 9, 2] == 255


def test_crop_covers_a_portrait_photo_for_a_landscape_input():
    fitted = fit(Image.new("RGB", (50, 100)), 40, 20, "crop")
    assert fitted.size == (40, 20)


def test_cache_preprocesses_each_image_once_and_stacks_batches():
    calls = []

    class CountingImage:
        def __init__(self, image):
            self.image = image

        def convert(self, mode):
            calls.append(mode)
            return self.image.convert(mode)

    cache = TensorCache(
        [CountingImage(PHOTO), CountingImage(PHOTO.rotate(90))], SPEC, PreprocessOptions()
    )
    batch = cache.batch([0, 1, 0])
    assert batch.shape == (3, 3, 2, 2)
    np.testing.assert_array_equal(batch[0], batch[2])
    cache.prepare_all()
    cache.batch([1, 1])
    assert len(calls) == 2

    unbatched = TensorCache(
        [PHOTO], dataclasses.replace(SPEC, max_batch_size=0), PreprocessOptions()
    )
    assert unbatched.batch([0]).shape == (3, 2, 2)
    with pytest.raises(ValueError, match="does not batch"):
        unbatched.batch([0, 0])


# ---- the preprocessing follows the model ---------------------------------------------------------
UINT8_SPEC = dataclasses.replace(SPEC, input_dtype="UINT8", layout="NHWC")
JPEG_SPEC = dataclasses.replace(SPEC, input_dtype="BYTES", layout="ENCODED", height=16, width=16)


def test_a_uint8_input_takes_raw_pixels_without_being_told():
    raw = preprocess(PHOTO, UINT8_SPEC, PreprocessOptions())
    assert raw.dtype == np.uint8 and raw.shape == (2, 2, 3)
    np.testing.assert_array_equal(raw, PIXELS)
    # The server states the network's scaling: the client still sends raw pixels.
    stated = dataclasses.replace(UINT8_SPEC, stated_scaling="inception")
    np.testing.assert_array_equal(preprocess(PHOTO, stated, PreprocessOptions()), PIXELS)
    assert resolve_scaling(stated, None) == "none"
    assert resolve_scaling(stated, "none") == "none"


def test_a_float_input_follows_the_stated_scaling_and_an_explicit_flag_wins():
    vgg_model = dataclasses.replace(SPEC, stated_scaling="vgg")
    followed = preprocess(PHOTO, vgg_model, PreprocessOptions())
    np.testing.assert_allclose(followed[:, 0, 0], [0 - 123.0, 10 - 117.0, 20 - 104.0])
    explicit = preprocess(PHOTO, vgg_model, PreprocessOptions(scaling="none"))
    np.testing.assert_array_equal(explicit[:, 0, 0], [0.0, 10.0, 20.0])
    # Nothing stated: the bundled model's card (inception), as before.
    assert resolve_scaling(SPEC, None) == "inception"


@pytest.mark.parametrize("spec", [UINT8_SPEC, JPEG_SPEC], ids=["uint8", "jpeg"])
@pytest.mark.parametrize("scaling", ["inception", "vgg", "imagenet"])
def test_scaling_pixels_for_a_raw_input_is_a_clear_error(spec, scaling):
    with pytest.raises(PreprocessError) as caught:
        TensorCache([PHOTO], spec, PreprocessOptions(scaling=scaling))
    message = str(caught.value)
    assert f"--scaling {scaling} contradicts model 'm'" in message
    assert spec.input_dtype in message and "\n" not in message


def test_an_unknown_stated_scaling_asks_for_the_flag():
    odd = dataclasses.replace(SPEC, stated_scaling="yuv-magic")
    with pytest.raises(PreprocessError, match=r"'yuv-magic'.*pass --scaling explicitly"):
        resolve_scaling(odd, None)
    assert resolve_scaling(odd, "none") == "none"


def test_an_encoded_input_gets_the_fitted_photo_as_jpeg_bytes():
    photo = Image.fromarray(np.tile(PIXELS, (20, 40, 1)), "RGB")  # 80 x 40
    cache = TensorCache([photo, photo], JPEG_SPEC, PreprocessOptions())
    tensor = cache.tensor(0)
    assert tensor.dtype == np.object_ and tensor.shape == (1,)
    decoded = Image.open(io.BytesIO(tensor[0]))
    assert decoded.format == "JPEG" and decoded.size == (16, 16)
    batch = cache.batch([0, 1])
    assert batch.shape == (2, 1) and batch[1, 0] == tensor[0]
    # BYTES elements travel length-prefixed: 4 bytes each on top of the data.
    assert cache.request_bytes([0, 1]) == 2 * (4 + len(tensor[0]))
    assert payload_bytes(tensor) == 4 + len(tensor[0])


def test_bytes_per_request_of_each_wire_at_the_bundled_size():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8))
    size = {"height": 224, "width": 224}
    fp32 = TensorCache([photo], dataclasses.replace(SPEC, **size), PreprocessOptions())
    uint8 = TensorCache([photo], dataclasses.replace(UINT8_SPEC, **size), PreprocessOptions())
    jpeg = TensorCache([photo], dataclasses.replace(JPEG_SPEC, **size), PreprocessOptions())
    assert fp32.mean_request_bytes(2) == 2 * 3 * 224 * 224 * 4
    assert uint8.mean_request_bytes(1) == 3 * 224 * 224
    assert 0 < jpeg.mean_request_bytes(1) < uint8.mean_request_bytes(1)


def test_an_explicit_scaling_against_the_stated_one_is_noted_once(caplog):
    vgg_model = dataclasses.replace(SPEC, stated_scaling="vgg")
    with caplog.at_level("WARNING", logger="flowerdemo.core.preprocess"):
        cache = TensorCache([PHOTO] * 5, vgg_model, PreprocessOptions(scaling="inception"))
        cache.prepare_all()
    assert cache.scaling == "inception"
    notes = [r.getMessage() for r in caplog.records]
    assert notes == ["model 'm' states scaling 'vgg'; using --scaling inception as asked"]
