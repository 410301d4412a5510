import pytest
import torch

from mmgpt.model.fusion.cross_attention import GatedCrossAttentionBlock, MaskedCrossAttention
from mmgpt.model.fusion.media_mask import attend_index
from mmgpt.model.resamplers.perceiver import PerceiverResampler

IMG, EOC, A, B, C, D = 9, 8, 1, 2, 3, 4
WORKED = torch.tensor([[IMG, A, B, EOC, IMG, C, D]])  # <image> a b <eoc> <image> c d


@pytest.mark.parametrize(
    ("mask", "expected"),
    [("previous", [1, 1, 1, 1, 2, 2, 2]), ("following", [1, 2, 2, 2, 2, 0, 0])],
)
def test_worked_example_of_reference(mask, expected):
    index = attend_index(WORKED, image_token_id=IMG, image_counts=torch.tensor([2]), media_mask=mask)
    assert index.tolist() == [expected]


@pytest.mark.parametrize("mask", ["previous", "following"])
def test_index_of_chunks_continues_the_count(mask):
    counts = torch.tensor([2])
    full = attend_index(WORKED, image_token_id=IMG, image_counts=counts, media_mask=mask)
    for cut in range(1, WORKED.shape[1]):
        head, tail = WORKED[:, :cut], WORKED[:, cut:]
        before = (head == IMG).sum(1)
        part = attend_index(tail, image_token_id=IMG, image_counts=counts, media_mask=mask, images_before=before)
        assert part.tolist() == full[:, cut:].tolist()


def test_text_before_any_image_and_rows_without_images():
    ids = torch.tensor([[A, IMG, B], [A, B, C]])
    counts = torch.tensor([1, 0])
    assert attend_index(ids, image_token_id=IMG, image_counts=counts, media_mask="previous").tolist() == [
        [0, 1, 1],
        [0, 0, 0],
    ]
    assert attend_index(ids, image_token_id=IMG, image_counts=counts, media_mask="following").tolist() == [
        [1, 1, 0],
        [0, 0, 0],
    ]


def test_unknown_mask_is_an_error():
    with pytest.raises(ValueError, match="media_mask='next'"):
        attend_index(WORKED, image_token_id=IMG, image_counts=torch.tensor([2]), media_mask="next")


def _attn_inputs(seed=0):
    torch.manual_seed(seed)
    attn = MaskedCrossAttention(dim=16, dim_visual=12, heads=2, dim_head=4)
    latents = torch.randn(1, 3, 5, 12)  # 3 images x 5 latents
    x = torch.randn(1, 4, 16)
    return attn, latents, x


def test_each_token_sees_only_its_image_and_no_image_gives_zero():
    attn, latents, x = _attn_inputs()
    index = torch.tensor([[0, 1, 2, 3]])
    out = attn(x, *attn.project_media(latents), index, 5)
    assert torch.equal(out[0, 0], torch.zeros(16))
    changed = latents.clone()
    changed[0, 1] += 1.0  # image 2
    out2 = attn(x, *attn.project_media(changed), index, 5)
    assert torch.equal(out2[0, [0, 1, 3]], out[0, [0, 1, 3]])
    assert not torch.allclose(out2[0, 2], out[0, 2])


def test_attention_matches_a_direct_softmax():
    attn, latents, x = _attn_inputs(1)
    index = torch.tensor([[2, 2, 1, 3]])
    out = attn(x, *attn.project_media(latents), index, 5)
    q = attn.to_q(attn.norm(x)).view(1, 4, 2, 4).transpose(1, 2)
    k, v = attn.to_kv(latents.flatten(1, 2)).chunk(2, -1)
    k, v = (t.view(1, 15, 2, 4).transpose(1, 2) for t in (k, v))
    rows = []
    for t, img in enumerate(index[0].tolist()):
        sl = slice((img - 1) * 5, img * 5)
        w = (q[:, :, t : t + 1] @ k[:, :, sl].transpose(-1, -2) * 4**-0.5).softmax(-1)
        rows.append((w @ v[:, :, sl]).transpose(1, 2).flatten(2))
    torch.testing.assert_close(out, attn.to_out(torch.cat(rows, 1)))


def test_fresh_block_is_identity_and_ff_runs_on_every_token():
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(dim=16, dim_visual=12, heads=2, dim_head=4)
    x, latents = torch.randn(1, 4, 16), torch.randn(1, 2, 5, 12)
    index = torch.tensor([[0, 1, 2, 0]])
    kv = block.attn.project_media(latents)
    assert torch.equal(block(x, *kv, index, 5), x)
    with torch.no_grad():
        block.ff_gate.fill_(1.0)
    y = block(x, *kv, index, 5)
    expected = block.ff(x) * torch.tanh(torch.tensor(1.0)) + x
    torch.testing.assert_close(y, expected)  # attention gate closed: only the ff, on all tokens (index 0 too)


def test_perceiver_shapes_and_no_biases():
    p = PerceiverResampler(dim=32, depth=2, heads=2, dim_head=8, num_latents=6)
    out = p(torch.randn(2, 3, 10, 32))
    assert out.shape == (2, 3, 6, 32)
    linear_biases = [
        n for n, _ in p.named_parameters() if n.endswith("bias") and "norm" not in n and not n.endswith(".1.0.bias")
    ]
    assert linear_biases == []
    assert sorted({n.split(".", 2)[2] for n, _ in p.named_parameters() if n.startswith("layers.0.")}) == [
        "0.norm_latents.bias",
        "0.norm_latents.weight",
        "0.norm_media.bias",
        "0.norm_media.weight",
        "0.to_kv.weight",
        "0.to_out.weight",
        "0.to_q.weight",
        "1.0.bias",
        "1.0.weight",
        "1.1.weight",
        "1.3.weight",
    ]
