"""VoVNet-99-eSE (the published CMT model's image backbone) against timm's ``ese_vovnet99b``.

The two agree on the stem, the OSA layers, the concat 1x1 conv, the eSE gate and the
identity rule. They differ in one place: the official VoVNet (CMT's ``vovnet.py``)
gates every OSA module with eSE, timm only the last module of each stage. The
whole-network check therefore gives timm's other blocks an eSE module too; a second
check pins the difference itself (timm's plain block = ours without its gate).
"""
from __future__ import annotations

import re

import pytest
import torch
from model_helpers import randomise_batchnorm
from timm_reference import timm_vovnet
from torch import nn

from aqr_perception.model.vovnet import VoVNet

pytestmark = pytest.mark.timeout(300)


def timm_to_ours(key: str) -> str:
    key = re.sub(r"\.conv_mid\.(\d+)\.", r".layers.\1.", key)
    return key.replace(".conv_concat.", ".concat.").replace(".attn.fc.", ".ese.fc.")


@pytest.fixture(scope="module")
def pair():
    gen = torch.Generator().manual_seed(0)
    ref = timm_vovnet("ese_vovnet99b")
    plain = {}
    for s, stage in enumerate(ref.stages):
        for b, block in enumerate(stage.blocks):
            if block.attn is None:   # official: eSE in every OSA module
                plain[(s, b)] = True
                block.attn = type(stage.blocks[-1].attn)(block.conv_concat.conv.out_channels)
    with torch.no_grad():
        randomise_batchnorm(ref, nn.BatchNorm2d, gen, 0.1)
    ours = VoVNet("V-99-eSE", frozen_bn=True).eval()
    state = {timm_to_ours(k): v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")
             and not k.startswith("head.")}
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing[:3], unexpected[:3])
    # float64: random weights grow activations to ~1e5 by stage 5, and float32 rounding
    # with them; in double precision any real difference stands far above the rounding
    return ref.double(), ours.double(), plain


def _inputs_outputs(model: nn.Module, modules, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((i[0], o))) for m in modules]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def _close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-10) -> bool:
    """Equal up to ``rel`` of the reference's largest magnitude."""
    return got.shape == want.shape and float((got - want).abs().max()) <= rel * float(want.abs().max())


def test_every_block_stage_and_the_c4_c5_outputs_match_timm(pair):
    ref, ours, _ = pair
    x = torch.randn(2, 3, 64, 160, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref_blocks = [b for st in ref.stages for b in st.blocks]
    our_blocks = [b for st in ours.stages for b in st.blocks]
    assert len(our_blocks) == len(ref_blocks) == 1 + 3 + 9 + 3
    with torch.no_grad():
        # layer by layer: each of our blocks (and stages, max pool included) on timm's input to it
        for i, (inp, out) in enumerate(_inputs_outputs(ref, ref_blocks, x)):
            assert _close(our_blocks[i](inp), out), f"block {i}"
        for i, (inp, out) in enumerate(_inputs_outputs(ref, list(ref.stages), x)):
            assert _close(ours.stages[i](inp), out), f"stage {i + 2}"
        assert _close(ours.stem(x), ref.stem(x))
        c4, c5 = ours(x)
        stem = ref.stem(x)
        r3 = ref.stages[2](ref.stages[1](ref.stages[0](stem)))
        r4 = ref.stages[3](r3)
    assert c4.shape == (2, 768, 4, 10) and c5.shape == (2, 1024, 2, 5)
    assert _close(c4, r3) and _close(c5, r4)


def test_where_they_differ_timm_plain_block_is_ours_without_its_gate(pair):
    """timm's plain (non-last) block is our block with the eSE gate taken out."""
    ref, ours, plain = pair
    s, b = 1, 0
    assert plain.get((s, b)), "timm gives the first block of stage 3 no eSE"
    x = torch.randn(1, 256, 16, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    theirs = ref.stages[s].blocks[b]
    mine = ours.stages[s].blocks[b]
    gate, theirs_attn = mine.ese, theirs.attn
    try:
        mine.ese, theirs.attn = nn.Identity(), None
        with torch.no_grad():
            assert _close(mine(x), theirs(x))
    finally:
        mine.ese, theirs.attn = gate, theirs_attn
    with torch.no_grad():
        assert not torch.allclose(mine(x), mine.concat(torch.cat([x] + _chain(mine, x), 1)), atol=1e-3)


def _chain(block, x):
    outs, y = [], x
    for layer in block.layers:
        y = layer(y)
        outs.append(y)
    return outs
