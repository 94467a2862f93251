"""`dfast.Pipeline` against `dfast generate`: the same arguments give the same pixels and latents."""

import pickle
import threading
import time

import dfast
import numpy as np
import pytest
from conftest import ROOT, TINY_SD
from PIL import Image


def generate_cli(cli, lib, tmp_path, name, *args):
    """`dfast generate` with the library the package loaded; returns (pixels, latents)."""
    png, npy = tmp_path / f"{name}.png", tmp_path / f"{name}.npy"
    cli("generate", "--model", TINY_SD, "--ort-lib", lib, "--out", png, "--save-latents", npy, *args)
    return np.asarray(Image.open(png).convert("RGB")), np.load(npy)


def test_text_to_image_matches_the_cli(cli, tiny_sd, tmp_path):
    out = tiny_sd("a red fox in the snow", seed=7, num_inference_steps=4)
    pixels, latents = generate_cli(cli, tiny_sd.ort_library, tmp_path, "t2i", "--prompt", "a red fox in the snow",
                                   "--seed", 7, "--steps", 4)
    assert len(out.images) == 1 and isinstance(out.images[0], Image.Image)
    assert out.latents.dtype == np.float32 and out.latents.shape == latents.shape
    np.testing.assert_array_equal(out.latents, latents)
    np.testing.assert_array_equal(np.asarray(out.images[0]), pixels)
    assert set(out.timings) >= {"text_encoding", "unet_steps", "vae_decode", "total", "started_at", "finished_at"}
    assert len(out.timings["unet_steps"]) >= 4 and out.timings["total"] > 0


def test_every_diffusers_argument_matches_the_cli(cli, tiny_sd, tmp_path):
    out = tiny_sd("a lighthouse", negative_prompt="blurry", num_inference_steps=3, guidance_scale=5.5, seed=11,
                  width=128, height=64, num_images_per_prompt=2)
    png = tmp_path / "batch.png"
    cli("generate", "--model", TINY_SD, "--ort-lib", tiny_sd.ort_library, "--out", png, "--prompt", "a lighthouse",
        "--negative-prompt", "blurry", "--steps", 3, "--guidance", 5.5, "--seed", 11, "--width", 128, "--height", 64,
        "--num-images", 2)
    assert [im.size for im in out.images] == [(128, 64), (128, 64)]
    for i, image in enumerate(out.images):
        cli_pixels = np.asarray(Image.open(tmp_path / f"batch-{i}.png").convert("RGB"))
        np.testing.assert_array_equal(np.asarray(image), cli_pixels)
    # The two images differ: each has its own noise from the one seed.
    assert not np.array_equal(np.asarray(out.images[0]), np.asarray(out.images[1]))


def test_img2img_matches_the_cli(cli, tiny_sd, tmp_path):
    start, _ = generate_cli(cli, tiny_sd.ort_library, tmp_path, "start", "--prompt", "a house", "--seed", 1,
                            "--steps", 2)
    pixels, latents = generate_cli(cli, tiny_sd.ort_library, tmp_path, "i2i", "--prompt", "a house at night",
                                   "--image", tmp_path / "start.png", "--strength", 0.6, "--seed", 5, "--steps", 5)
    # The image as a PIL image, as a uint8 array and as a path give the same result.
    for image in (Image.open(tmp_path / "start.png"), start, tmp_path / "start.png"):
        out = tiny_sd("a house at night", image=image, strength=0.6, seed=5, num_inference_steps=5)
        np.testing.assert_array_equal(out.latents, latents)
        np.testing.assert_array_equal(np.asarray(out.images[0]), pixels)
    assert out.config["strength"] == 0.6 and out.timings["vae_encode"] > 0


@pytest.mark.parametrize(
    ("model", "kwargs", "flags"),
    [
        ("tiny-sdxl", {"scheduler": "euler-a"}, ["--scheduler", "euler-a"]),
        ("tiny-pixart", {"width": 96, "height": 64, "use_resolution_binning": False},
         ["--width", 96, "--height", 64, "--no-resolution-binning"]),
        ("tiny-pixart", {"width": 96, "height": 64}, ["--width", 96, "--height", 64]),
    ],
    ids=["sdxl-euler-a", "pixart-unbinned", "pixart-binned"],
)
def test_other_pipelines_match_the_cli(cli, tmp_path, model, kwargs, flags):
    pipe = dfast.Pipeline(ROOT / "models" / model)
    out = pipe("a bowl of fruit", seed=4, num_inference_steps=3, **kwargs)
    png, npy = tmp_path / "out.png", tmp_path / "out.npy"
    cli("generate", "--model", ROOT / "models" / model, "--ort-lib", pipe.ort_library, "--out", png, "--save-latents",
        npy, "--prompt", "a bowl of fruit", "--seed", 4, "--steps", 3, *flags)
    np.testing.assert_array_equal(out.latents, np.load(npy))
    np.testing.assert_array_equal(np.asarray(out.images[0]), np.asarray(Image.open(png).convert("RGB")))


def test_inpainting_matches_the_cli(cli, tmp_path):
    model = ROOT / "models" / "tiny-sd-inpaint"
    pipe = dfast.Pipeline(model)
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 8:40] = 255
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    png, npy = tmp_path / "out.png", tmp_path / "out.npy"
    cli("generate", "--model", model, "--ort-lib", pipe.ort_library, "--out", png, "--save-latents", npy, "--prompt",
        "a cat", "--image", tmp_path / "image.png", "--mask", tmp_path / "mask.png", "--seed", 9, "--steps", 3)
    # The mask as a PIL image and as a 2-D uint8 array.
    for mask_image in (Image.open(tmp_path / "mask.png"), mask):
        out = pipe("a cat", image=image, mask_image=mask_image, seed=9, num_inference_steps=3)
        np.testing.assert_array_equal(out.latents, np.load(npy))
        np.testing.assert_array_equal(np.asarray(out.images[0]), np.asarray(Image.open(png).convert("RGB")))


def test_latents_replace_the_seeded_noise(cli, tiny_sd, tmp_path):
    noise = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.save(tmp_path / "noise.npy", noise)
    pixels, latents = generate_cli(cli, tiny_sd.ort_library, tmp_path, "lat", "--prompt", "a boat", "--latents",
                                   tmp_path / "noise.npy", "--steps", 3, "--width", 64, "--height", 64)
    out = tiny_sd("a boat", latents=noise, num_inference_steps=3, width=64, height=64, seed=123)
    np.testing.assert_array_equal(out.latents, latents)
    np.testing.assert_array_equal(np.asarray(out.images[0]), pixels)


def test_without_pillow_images_are_arrays(tiny_sd, monkeypatch):
    with_pil = np.asarray(tiny_sd("a tree", seed=2, num_inference_steps=2).images[0])
    monkeypatch.setitem(__import__("sys").modules, "PIL", None)
    without = tiny_sd("a tree", seed=2, num_inference_steps=2)
    array = without.images[0]
    assert isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.shape[2] == 3
    np.testing.assert_array_equal(array, with_pil)


@pytest.mark.parametrize(
    ("python", "cli_args"),
    [
        (lambda p: dfast.Pipeline(TINY_SD, ep="tpu"), ["--ep", "tpu"]),
        (lambda p: p("x", image="/no/such/image.png"), ["--image", "/no/such/image.png"]),
        (lambda p: p("x", image=ROOT / "models" / "tiny-sd" / "model_index.json"),
         ["--image", ROOT / "models" / "tiny-sd" / "model_index.json"]),
        (lambda p: p("x", latents="/no/such/noise.npy"), ["--latents", "/no/such/noise.npy"]),
        (lambda p: dfast.Pipeline(ROOT / "no-such-folder"), ["--model", ROOT / "no-such-folder"]),
    ],
    ids=["ep", "missing-image", "not-an-image", "missing-latents", "missing-model"],
)
def test_bad_input_raises_the_cli_sentence(cli, tiny_sd, tmp_path, python, cli_args):
    done = cli("generate", "--prompt", "x", "--out", tmp_path / "x.png", *cli_args, ok=False)
    assert done.returncode != 0
    sentence = done.stderr.strip().removeprefix("error: ")
    assert "\n" not in sentence
    with pytest.raises(dfast.DfastError) as caught:
        python(tiny_sd)
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == sentence
    # The error crosses process boundaries (multiprocessing, Ray) as itself.
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is dfast.DfastError and str(again) == sentence


def test_two_pipelines_in_two_threads_overlap(tiny_sd):
    """Each run's span is taken inside the library with the interpreter's lock released; if the lock were
    held, the runs would take turns and the spans could not overlap."""
    pipes = [tiny_sd, dfast.Pipeline(TINY_SD)]
    spans, errors = [None, None], []
    barrier = threading.Barrier(2)

    def run(i):
        try:
            barrier.wait()
            out = pipes[i](f"a river {i}", seed=i, num_inference_steps=30, width=128, height=128)
            spans[i] = (out.timings["started_at"], out.timings["finished_at"])
        except Exception as e:  # noqa: BLE001 (reported by the main thread)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    # The main thread keeps running Python meanwhile: it ticks while the pipelines run.
    ticks = []
    while any(t.is_alive() for t in threads):
        ticks.append(time.time())
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert not errors, errors
    (a0, a1), (b0, b1) = spans
    overlap = min(a1, b1) - max(a0, b0)
    print(f"run A {a0:.3f}..{a1:.3f}, run B {b0:.3f}..{b1:.3f}: overlap {overlap:.3f} s "
          f"of {a1 - a0:.3f} s and {b1 - b0:.3f} s")
    assert overlap > 0.5 * min(a1 - a0, b1 - b0)
    inside = [t for t in ticks if max(a0, b0) < t < min(a1, b1)]
    assert len(inside) >= 5, f"{len(inside)} ticks of the main thread while both ran"
