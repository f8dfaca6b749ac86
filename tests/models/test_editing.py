import pytest
import torch

from models.editing import DirectionMatrix, sample_edits, scatter_edits


def test_shape_and_init_std():
    T = DirectionMatrix(14, 512, 3, generator=torch.Generator().manual_seed(0))
    assert T.T.shape == (14, 512, 3)
    assert abs(T.T.std().item() - 0.02) < 0.001


def test_apply_is_wplus_plus_T_s_by_hand():
    d = DirectionMatrix(2, 3, 2)
    with torch.no_grad():
        d.T.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
                                [[2.0, 0.0], [0.0, 0.0], [0.0, -1.0]]]))
    wplus = torch.zeros(1, 2, 3)
    s = torch.tensor([[0.5, 2.0]])
    out = d.edit(wplus, s)
    expected = torch.tensor([[[0.5, 2.0, 2.5], [1.0, 0.0, -2.0]]])
    assert torch.allclose(out, expected)


def test_layer_mask_freezes_other_layers():
    d = DirectionMatrix(4, 5, 2, layer_mask=[1, 2])
    wplus = torch.randn(3, 4, 5)
    out = d(wplus, torch.ones(3, 2))
    assert torch.equal(out[:, [0, 3]], wplus[:, [0, 3]])
    assert not torch.allclose(out[:, 1], wplus[:, 1])
    out.sum().backward()
    assert torch.all(d.T.grad[[0, 3]] == 0) and torch.any(d.T.grad[1] != 0)


def test_layer_mask_out_of_range():
    with pytest.raises(ValueError, match=r"outside 0\.\.3"):
        DirectionMatrix(4, 5, 2, layer_mask=[4])


def test_shape_contract_is_asserted():
    d = DirectionMatrix(4, 5, 2)
    with pytest.raises(AssertionError, match=r"s must be \[B, 2\]"):
        d(torch.zeros(1, 4, 5), torch.zeros(1, 3))
    with pytest.raises(AssertionError, match=r"wplus must be \[B, 4, 5\]"):
        d(torch.zeros(1, 3, 5), torch.zeros(1, 2))


def test_scatter_places_edits_into_regressor_slots():
    s = torch.tensor([[0.3, -0.2]])
    full = scatter_edits(s, torch.tensor([2, 0]), 4)
    assert torch.equal(full, torch.tensor([[-0.2, 0.0, 0.3, 0.0]]))


def test_sample_edits_modes():
    u = torch.tensor([[0.0, 0.25, 0.999]])
    assert torch.allclose(sample_edits("uniform", u), torch.tensor([[-1.0, -0.5, 0.998]]))
    current = torch.tensor([[0.5, 0.5, 0.5]])
    assert torch.allclose(sample_edits("target", u, current), u - current)
    with pytest.raises(ValueError, match="needs the regressor"):
        sample_edits("target", u)
    with pytest.raises(ValueError, match="uniform"):
        sample_edits("gaussian", u)
