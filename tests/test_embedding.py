"""embed(): batched, one pass for all layers, independent of batch size, files decoded in workers, streamed."""

from __future__ import annotations

import numpy as np
import pytest

from forensics.encode.embed import embed, iter_embed
from forensics.errors import UsageError
from forensics.testing import sample_images


@pytest.fixture(scope="module")
def lite():
    from forensics.plugins import PluginHost

    return PluginHost(autoload=False).get("encoders", "tf_efficientnet_lite0").obj(weights="random", image_size=32)


@pytest.fixture(scope="module")
def images():
    return sample_images(n=7, size=36)


def test_results_do_not_depend_on_batch_size(lite, images):
    whole = embed(lite, images, batch_size=len(images))
    for batch_size in (1, 3, 64):
        parts = embed(lite, images, batch_size=batch_size)
        for a, b in zip(parts, whole):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_what_an_encoder_prints_per_batch_goes_to_stderr(lite, images, count_calls, capsys):
    """A plugin's progress line from forward_layers would land in front of `--json`'s document on stdout."""
    class Chatty(type(count_calls(lite))):
        def forward_layers(self, pixels, layers):
            print(f"encoded {len(pixels)}")
            return super().forward_layers(pixels, layers)

    capsys.readouterr()
    out = embed(Chatty(lite), images, batch_size=4)
    printed = capsys.readouterr()
    assert printed.out == "" and "encoded 4" in printed.err and "encoded 3" in printed.err
    assert all(np.array_equal(a, b) for a, b in zip(out, embed(lite, images, batch_size=4)))


def test_all_layers_from_one_forward_pass_per_batch(lite, images, count_calls):
    counting = count_calls(lite)
    out = embed(counting, images, batch_size=4)
    assert [layers for layers, _ in counting.calls] == [lite.layer_names] * 2
    assert [n for _, n in counting.calls] == [4, 3]
    assert [o.shape for o in out] == [(7, layer.dim) for layer in lite.layers]
    assert all(o.dtype == np.float32 for o in out)


def test_layers_in_depth_order_and_progress(lite, images):
    seen = []
    out = embed(lite, images, layers=["bn2", "bn1"], batch_size=3, progress=lambda d, t: seen.append((d, t)))
    assert [o.shape[1] for o in out] == [32, 1280]  # depth order: bn1 first
    assert seen == [(3, 7), (6, 7), (7, 7)]
    with pytest.raises(UsageError, match="no layer"):
        embed(lite, images, layers=["blocks.99"])


def test_streaming_yields_batches_in_order(lite, images):
    starts, rows = [], 0
    for start, feats in iter_embed(lite, images, layers=["blocks.6"], batch_size=2):
        starts.append(start)
        rows += len(feats[0])
        assert feats[0].shape[1] == 320
    assert starts == [0, 2, 4, 6] and rows == 7


def test_image_files_decoded_in_worker_processes(lite, images, tmp_path):
    from PIL import Image

    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    from_array = embed(lite, images, layers=["bn1", "bn2"], batch_size=3)
    inline = embed(lite, [str(p) for p in paths], layers=["bn1", "bn2"], batch_size=3)
    workers = embed(lite, paths, layers=["bn1", "bn2"], batch_size=3, workers=2)
    for a, b, c in zip(from_array, inline, workers):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-6)


def test_workers_on_arrays_match(lite, images):
    a = embed(lite, images, layers=["blocks.3"], batch_size=2)[0]
    b = embed(lite, images, layers=["blocks.3"], batch_size=2, workers=1)[0]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_autocast_option(lite, images):
    full = embed(lite, images, layers=["bn2"])[0]
    low = embed(lite, images, layers=["bn2"], amp="bf16")[0]
    assert low.dtype == np.float32 and low.shape == full.shape
    assert np.corrcoef(low.ravel(), full.ravel())[0, 1] > 0.95
    with pytest.raises(UsageError, match="amp"):
        embed(lite, images, amp="fp8")


def test_without_amp_cuda_convolutions_stay_float32_and_the_setting_is_restored():
    # cuDNN may run float32 convolutions in TF32 by default; the embedding turns that off for its own
    # forward passes only (the flags are process-wide: a user's setting comes back afterwards)
    import torch

    from forensics.encode.embed import _float32

    cudnn = torch.backends.cudnn
    before = cudnn.allow_tf32, cudnn.enabled, cudnn.benchmark
    cudnn.allow_tf32 = True
    try:
        with _float32(torch.device("cuda"), None):
            assert cudnn.allow_tf32 is False and cudnn.enabled == before[1] and cudnn.benchmark == before[2]
        assert cudnn.allow_tf32 is True
        with _float32(torch.device("cuda"), "bf16"), _float32(torch.device("cpu"), None):
            assert cudnn.allow_tf32 is True  # autocast chosen, or not CUDA: left alone
    finally:
        cudnn.allow_tf32 = before[0]


def test_grey_and_empty_inputs(lite):
    grey = sample_images(n=2, size=20)[..., 0]
    assert embed(lite, grey, layers=["bn1"])[0].shape == (2, 32)
    empty = embed(lite, np.zeros((0, 20, 20, 3), np.uint8), layers=["bn1"])
    assert empty[0].shape == (0, 32)
    with pytest.raises(UsageError):
        embed(lite, np.zeros((2, 20, 20, 3), np.float32))
    with pytest.raises(UsageError, match="batch_size"):
        embed(lite, grey, batch_size=0)


def test_stdout_comes_back_after_threads_encode_at_once(lite, images, count_calls, capsys):
    """Each batch sends stdout to stderr; threads leaving out of order must still give stdout back."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    before = sys.stdout
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: embed(lite, images, batch_size=2), range(8)))
    assert sys.stdout is before
    print("still stdout")
    assert capsys.readouterr().out == "still stdout\n"
