"""Build an ONNX graph for EfficientNet-Lite from a numpy state dict.

The architecture is the one of the `efficientnet-lite-pytorch` package (ReLU6, no
squeeze-excite, TensorFlow "same" padding computed for a fixed input size). It is read off
the state dict itself (block count, channels, kernel sizes), so lite0, lite1 and lite2 all go
through this one builder; only the stage strides come from the published block table.
Batch norms are folded into the convolutions before the graph is written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Array = np.ndarray[Any, Any]
BN_EPS = 1e-3
# Strides of the seven stages of every EfficientNet (efficientnet_lite_builder.py).
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)


@dataclass(frozen=True)
class Block:
    index: int
    expand: bool
    in_ch: int
    out_ch: int
    kernel: int
    stride: int


def _fold(sd: dict[str, Array], conv: str, bn: str) -> tuple[Array, Array]:
    w = sd[f"{conv}.weight"].astype(np.float64)
    scale = sd[f"{bn}.weight"].astype(np.float64) / np.sqrt(sd[f"{bn}.running_var"].astype(np.float64) + BN_EPS)
    bias = sd[f"{bn}.bias"] - sd[f"{bn}.running_mean"] * scale
    return (w * scale[:, None, None, None]).astype(np.float32), bias.astype(np.float32)


def read_blocks(sd: dict[str, Array]) -> list[Block]:
    """Recover the block list from the state dict: a new stage starts where the width changes."""
    count = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"_blocks\.(\d+)\.", k)))
    blocks: list[Block] = []
    stage, prev_out = -1, -1
    in_ch = sd["_conv_stem.weight"].shape[0]
    for i in range(count):
        out_ch = sd[f"_blocks.{i}._project_conv.weight"].shape[0]
        if out_ch != prev_out:
            stage += 1
        if stage >= len(STAGE_STRIDES):
            raise ValueError("state dict has more stages than EfficientNet")
        dw = sd[f"_blocks.{i}._depthwise_conv.weight"]
        stride = STAGE_STRIDES[stage] if out_ch != prev_out else 1
        expand = f"_blocks.{i}._expand_conv.weight" in sd
        blocks.append(Block(i, expand, in_ch, out_ch, dw.shape[-1], stride))
        in_ch, prev_out = out_ch, out_ch
    return blocks


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow SAME padding for a square input: (before, after, output size)."""
    out = math.ceil(size / stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return pad // 2, pad - pad // 2, out


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: Array) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def conv(self, x: str, name: str, w: Array, b: Array, size: int, stride: int, group: int = 1) -> tuple[str, int]:
        k = w.shape[-1]
        before, after, out = _same_pads(size, k, stride)
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.const(f"{name}.w", w), self.const(f"{name}.b", b)],
                [name],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[before, before, after, after],
                group=group,
            )
        )
        return name, out

    def relu6(self, x: str) -> str:
        # Clip's bounds are inputs since opset 11; they are shared constants.
        y = f"{x}.relu6"
        self.nodes.append(helper.make_node("Clip", [x, "zero", "six"], [y]))
        return y

    def add(self, a: str, b: str, name: str) -> str:
        self.nodes.append(helper.make_node("Add", [a, b], [name]))
        return name


def _block(g: _Graph, sd: dict[str, Array], blk: Block, x: str, size: int) -> tuple[str, int]:
    p = f"_blocks.{blk.index}"
    h = x
    if blk.expand:
        w, b = _fold(sd, f"{p}._expand_conv", f"{p}._bn0")
        h, _ = g.conv(h, f"{p}.expand", w, b, size, 1)
        h = g.relu6(h)
    w, b = _fold(sd, f"{p}._depthwise_conv", f"{p}._bn1")
    h, out = g.conv(h, f"{p}.dw", w, b, size, blk.stride, group=w.shape[0])
    h = g.relu6(h)
    w, b = _fold(sd, f"{p}._project_conv", f"{p}._bn2")
    h, _ = g.conv(h, f"{p}.project", w, b, out, 1)
    if blk.stride == 1 and blk.in_ch == blk.out_ch:
        h = g.add(h, x, f"{p}.out")
    return h, out


def build_onnx(sd: dict[str, Array], image_size: int, name: str = "efficientnet-lite") -> onnx.ModelProto:
    """The whole network: float32 NCHW input `input` (batch dynamic) → logits `logits`."""
    g = _Graph()
    g.const("zero", np.array(0.0, np.float32))
    g.const("six", np.array(6.0, np.float32))
    w, b = _fold(sd, "_conv_stem", "_bn0")
    x, size = g.conv("input", "stem", w, b, image_size, 2)
    x = g.relu6(x)
    for blk in read_blocks(sd):
        x, size = _block(g, sd, blk, x, size)
    w, b = _fold(sd, "_conv_head", "_bn1")
    x, _ = g.conv(x, "head", w, b, size, 1)
    x = g.relu6(x)
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    g.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1))
    fc_w, fc_b = sd["_fc.weight"].astype(np.float32), sd["_fc.bias"].astype(np.float32)
    g.nodes.append(
        helper.make_node("Gemm", ["features", g.const("fc.w", fc_w), g.const("fc.b", fc_b)], ["logits"], transB=1)
    )
    graph = helper.make_graph(
        g.nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", fc_w.shape[0]])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="iraas")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
