"""The measuring module: MACs, params, size and latency of float, QAT and int8 networks."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from slimlab.compression.measure import (
    compare,
    count_macs,
    count_params,
    measure,
    measure_latency,
    size_on_disk,
)
from slimlab.models.nets import SmallCNN


def tiny_net() -> nn.Module:
    # conv 1->4 (3x3, 8x8 out) -> conv 4->6 (1x1, stride 2: 4x4 out) -> flatten -> linear 96->5
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 1, stride=2),
        nn.Flatten(),
        nn.Linear(96, 5),
    )


TINY_MACS = 64 * 4 * 1 * 9 + 16 * 6 * 4 + 5 * 96


def test_count_macs_of_conv_and_linear_layers() -> None:
    net = tiny_net().train()
    assert count_macs(net, torch.zeros(1, 1, 8, 8)) == TINY_MACS
    assert count_macs(net, torch.zeros(3, 1, 8, 8)) == 3 * TINY_MACS  # the whole batch
    assert net.training, "the network's mode is restored"
    grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    assert count_macs(grouped, torch.zeros(1, 4, 5, 5)) == 25 * 8 * 2 * 9
    transposed = nn.ConvTranspose2d(4, 2, 2, stride=2)
    assert count_macs(transposed, torch.zeros(1, 4, 3, 3)) == 9 * 4 * 2 * 4


def test_qat_and_int8_networks_count_the_same_macs() -> None:
    from slimlab.compression.pt2e import convert_int8, prepare_qat

    net = SmallCNN(widths=(8, 16))
    x = torch.randn(2, 1, 8, 8)
    dense = count_macs(net, x[:1])
    prepared = prepare_qat(copy.deepcopy(net), x[:1])
    prepared(x)
    state = {k: v.clone() for k, v in prepared.state_dict().items()}
    assert count_macs(prepared, x[:1]) == dense
    measure_latency(prepared, x, batch_size=8, repeats=2, warmup=1)
    for key, value in prepared.state_dict().items():  # observers paused, flags restored
        torch.testing.assert_close(value, state[key], msg=key, rtol=0, atol=0)
    assert prepared.training
    int8 = convert_int8(prepared)
    assert count_macs(int8, x[:1]) == dense
    # batch norms fold into the convs: their scale and shift go, each conv gains a bias; the
    # int8 weights count as the float weights they replace
    assert count_params(int8) == count_params(net) - 2 * (8 + 16) + (8 + 16)
    assert size_on_disk(int8) < size_on_disk(net)


def test_size_on_disk_is_the_saved_state_dict() -> None:
    net = tiny_net()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    assert size_on_disk(net) == len(buffer.getvalue())


def test_latency_restores_threads_and_mode() -> None:
    net = tiny_net().train()
    threads = torch.get_num_threads()
    ms = measure_latency(net, torch.zeros(1, 1, 8, 8), batch_size=4, repeats=3, warmup=1)
    assert ms > 0
    assert torch.get_num_threads() == threads
    assert net.training
    with pytest.raises(ValueError, match="batch_size=0"):
        measure_latency(net, torch.zeros(1, 1, 8, 8), batch_size=0)


def test_measure_and_compare() -> None:
    big, small = SmallCNN(widths=(16, 32)), SmallCNN(widths=(8, 16))
    x = torch.zeros(1, 1, 8, 8)
    before = measure(big, x, repeats=2)
    after = measure(small, x, repeats=2)
    assert set(before) == {"params", "macs", "size_bytes", "latency_ms_b1", "latency_ms_b64"}
    assert set(measure(small, x, latency=False)) == {"params", "macs", "size_bytes"}
    change = compare(before, after)
    assert change["before"] == before and change["after"] == after
    assert change["params_ratio"] == pytest.approx(after["params"] / before["params"])
    assert change["macs_ratio"] == pytest.approx(after["macs"] / before["macs"])
    assert change["size_ratio"] < 1
    assert change["speedup_b64"] == pytest.approx(
        before["latency_ms_b64"] / after["latency_ms_b64"]
    )
    without_latency = compare(measure(big, x, latency=False), measure(small, x, latency=False))
    assert without_latency["speedup_b1"] is None and without_latency["macs_ratio"] < 0.5
