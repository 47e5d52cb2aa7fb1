"""The PT2E stack: QAT-prepare, train, checkpoint round trip, convert, ONNX QDQ with the scales."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slimlab.data import DigitsDataModule
from slimlab.models.nets import SmallCNN

pytest.importorskip("torchao")
pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_pt2e_qat_trains_checkpoints_and_exports_its_own_scales(tmp_path: Path) -> None:
    from slimlab.compression.pt2e import convert_int8, prepare_qat, set_qat_state
    from slimlab.inference.exporters import export_onnx
    from slimlab.inference.runtime import onnx_runner, onnx_session

    dm = DigitsDataModule(seed=0)
    dm.setup("fit")
    x, y = (torch.stack(t) for t in zip(*dm.data_train))
    xt, yt = (torch.stack(t) for t in zip(*dm.data_test))
    torch.manual_seed(0)
    net = SmallCNN(1, 10, (16, 32))
    fresh = SmallCNN(1, 10, (16, 32))
    prepared = prepare_qat(net, x[:1])
    optimizer = torch.optim.Adam(prepared.parameters(), lr=1e-2)
    set_qat_state(prepared, fake_quant=True, observe=True)
    for epoch in range(4):
        prepared.train()  # as Lightning does every epoch: the exported graph's own train()
        set_qat_state(prepared, fake_quant=True, observe=epoch < 3, freeze_bn=epoch >= 2)
        for idx in torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch)).split(
            64
        ):
            loss = F.cross_entropy(prepared(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    prepared.eval()
    with torch.no_grad():
        qat_acc = float((prepared(xt).argmax(1) == yt).float().mean())
    assert qat_acc > 0.8  # 4 epochs from scratch, fake-quantized from the first step

    # checkpoint: plain tensors, loaded into a freshly exported and prepared network
    torch.save({"state_dict": prepared.state_dict()}, tmp_path / "qat.ckpt")
    state = torch.load(tmp_path / "qat.ckpt", weights_only=True)["state_dict"]
    again = prepare_qat(fresh, x[:1])
    again.load_state_dict(state)  # strict: the keys are the same
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(xt), prepared(xt))

    # convert, export: onnxruntime runs int8 kernels with the activation scales QAT learned
    converted = convert_int8(prepared)
    export_onnx(converted, x[:1], tmp_path / "qat.int8.onnx", opset=20)
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(tmp_path / "qat.int8.onnx"))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    first_q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    onnx_scale = float(np.asarray(constants[first_q.input[1]]).ravel()[0])
    input_quantizer = prepared.activation_post_process_0  # the network input's fake quant
    assert onnx_scale == pytest.approx(float(input_quantizer.scale), rel=1e-6)
    ort = onnx_runner(onnx_session(str(tmp_path / "qat.int8.onnx"), threads=1))
    int8_top1 = ort({"input": xt.numpy()}).argmax(1)
    assert (int8_top1 == yt.numpy()).mean() >= qat_acc - 0.02
