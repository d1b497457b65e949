"""The FUNGI support index (the negatives' neighbours) searches with the index kind its
embeddings bank was built with, chosen by the one rule every bank uses
(`IndexSettings.kind_for`: under `index.kind: auto`, device-exact on a GPU that holds the
bank); and with device-exact its neighbours are exact search's: the same ids in the same
order, own patches excluded the same way."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from conftest import tiny_settings
from segfungi.bank import SUPPORT_DIR, MemoryBank, SupportIndex
from segfungi.components import index_settings, support_spec
from segfungi.index import DESCRIBED, make_index


def test_auto_picks_device_exact_for_a_support_bank_on_a_gpu(fungi_bank, demo_voc_root):
    settings = index_settings(tiny_settings(demo_voc_root))
    support = MemoryBank(fungi_bank / SUPPORT_DIR)
    auto = dataclasses.replace(settings, kind="auto", exact_below=1)
    assert auto.kind_for(support.num_patches, support.feature_dim, DESCRIBED["h100-80gb"]) == "device-exact"
    assert auto.kind_for(support.num_patches, support.feature_dim, "cpu") != "device-exact"
    # The support bank and its FUNGI bank were built with one choice, recorded in each manifest.
    assert support.index_kind == MemoryBank(fungi_bank).index_kind


def test_device_exact_support_neighbours_equal_exact_ones(fungi_bank, demo_voc_root):
    settings = tiny_settings(demo_voc_root)
    exact_settings = dataclasses.replace(index_settings(settings), kind="exact")
    exact = SupportIndex(fungi_bank / SUPPORT_DIR, support_spec(settings), exact_settings)
    exact.index = make_index(exact.bank.feature_rows(), exact_settings, kind="exact", device="cpu")
    device = SupportIndex(fungi_bank / SUPPORT_DIR, support_spec(settings), exact_settings)
    # Small blocks and a small margin: several chunks and rescoring retries are exercised.
    small = dataclasses.replace(exact_settings, kind="device-exact", device_margin=2)
    device.index = make_index(device.bank.feature_rows(), small, kind="device-exact", device="cpu")
    device.index.block_elements = 4096
    assert type(device.index).__name__ == "DeviceExactIndex"

    source = exact.source_image.numpy()
    images = [0, 3, 7]
    # Each image's own stored patches as queries (their nearest rows are their own, and
    # flat background repeats: ties), plus random directions.
    own = [torch.as_tensor(exact.tokens[np.flatnonzero(source == image)[:40]]).float() for image in images]
    tokens = torch.stack(own)
    for image_ids in (images, None):
        expected = exact.neighbour_ids(tokens, image_ids)
        found = device.neighbour_ids(tokens, image_ids)
        assert torch.equal(found, expected)
        if image_ids is not None:  # the exclusion did work: no neighbour from the token's own image
            assert all((source[expected[b].numpy()] != image).all() for b, image in enumerate(images))
        else:  # without it a stored patch finds itself among its neighbours
            assert (source[expected.numpy()] == np.asarray(images)[:, None, None]).any()
    noise = torch.randn(2, 30, tokens.shape[-1], generator=torch.Generator().manual_seed(0))
    assert torch.equal(device.neighbour_ids(noise, [1, 5]), exact.neighbour_ids(noise, [1, 5]))
    assert device.index.retries > 0  # some queries needed the wider rescoring margin
