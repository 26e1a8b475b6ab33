"""Scoring heads: numpy scores equal torch's modules; bad files and shapes are one-line errors."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from curation.errors import CurationError
from curation.models import HeadSpec, load_head
from curation.models.tiny import make_head


def _embeddings(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_linear_matches_numpy_reference(tmp_path: Path):
    path = make_head(tmp_path / "linear.safetensors", in_dim=32)
    head = load_head(HeadSpec(str(path)))
    assert head.in_dim == 32
    x = _embeddings(7, 32)
    from safetensors.numpy import load_file

    t = load_file(str(path))
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    want = unit @ t["weight"].astype(np.float64).T[:, 0] + t["bias"][0]
    scores = head(x)
    assert scores.dtype == np.float64 and scores.shape == (7,)
    np.testing.assert_allclose(scores, want, rtol=1e-12)
    raw = load_head(HeadSpec(str(path), normalize_input=False))(x)
    np.testing.assert_allclose(raw, x.astype(np.float64) @ t["weight"].astype(np.float64)[0] + t["bias"][0])
    assert head.fingerprint != load_head(HeadSpec(str(path), normalize_input=False)).fingerprint


def test_laion_style_mlp_matches_torch(tmp_path: Path):
    """LAION's improved aesthetic predictor layout: Linear/Dropout stack, keys layers.0/2/4/6/7, no activation."""
    import torch

    torch.manual_seed(0)
    layers = torch.nn.Sequential(
        torch.nn.Linear(48, 40),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(40, 24),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(24, 16),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(16, 8),
        torch.nn.Linear(8, 1),
    ).eval()
    path = tmp_path / "aesthetic.pth"
    torch.save({f"layers.{k}": v for k, v in layers.state_dict().items()}, path)
    head = load_head(HeadSpec(str(path), layout="mlp"))
    x = _embeddings(9, 48, seed=1)
    with torch.no_grad():
        t = torch.from_numpy(x)
        want = layers(t / t.norm(dim=1, keepdim=True))[:, 0].double().numpy()
    np.testing.assert_allclose(head(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_mlp_activations_and_outputs_match_torch(tmp_path: Path, activation: str):
    import torch

    act = torch.nn.ReLU() if activation == "relu" else torch.nn.GELU()
    torch.manual_seed(1)
    # 12 layers: keys net.0 ... net.22 must be ordered by number (net.10 after net.8), not as strings
    mods: list[torch.nn.Module] = []
    widths = [16, 12, 10, 9, 8, 8, 7, 7, 6, 6, 5, 5, 3]
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        mods.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            mods.append(act)
    net = torch.nn.Sequential(*mods).eval()
    path = tmp_path / "head.bin"
    torch.save({f"net.{k}": v for k, v in net.state_dict().items()}, path)
    x = _embeddings(6, 16, seed=2)
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).double()

    def spec(**kwargs: Any) -> HeadSpec:
        return HeadSpec(str(path), layout="mlp", activation=activation, normalize_input=False, **kwargs)  # type: ignore[arg-type]

    raw = load_head(spec())(x)
    np.testing.assert_allclose(raw, logits[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    soft = load_head(spec(output="softmax", output_index=2))(x)
    np.testing.assert_allclose(soft, torch.softmax(logits, dim=1)[:, 2].numpy(), rtol=1e-5, atol=1e-6)
    sig = load_head(spec(output="sigmoid"))(x)
    np.testing.assert_allclose(sig, torch.sigmoid(logits[:, 0]).numpy(), rtol=1e-5, atol=1e-6)


def test_make_head_mlp_is_readable(tmp_path: Path):
    path = make_head(tmp_path / "mlp.safetensors", in_dim=8, layout="mlp", hidden=(6, 4))
    head = load_head(HeadSpec(str(path), layout="mlp"))
    assert (head.in_dim, len(head.layers)) == (8, 3)
    assert np.isfinite(head(_embeddings(3, 8))).all()


def test_errors(tmp_path: Path):
    import torch

    with pytest.raises(CurationError, match=r"missing.pt does not exist"):
        load_head(HeadSpec(str(tmp_path / "missing.pt")))
    broken = {"a.0.weight": torch.zeros(8, 4), "a.1.weight": torch.zeros(2, 7), "a.1.bias": torch.zeros(2)}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CurationError, match=r"a\.0\.weight \(8, 4\) outputs 8 but a\.1\.weight \(2, 7\) takes 7"):
        load_head(HeadSpec(str(tmp_path / "broken.pt"), layout="mlp"))
    with pytest.raises(CurationError, match="layout linear needs exactly one"):
        load_head(HeadSpec(str(tmp_path / "broken.pt")))
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CurationError, match="holds a list, not a state dict"):
        load_head(HeadSpec(str(tmp_path / "list.pt")))
    (tmp_path / "pickled.pt").write_bytes(pickle.dumps(object(), protocol=2))
    with pytest.raises(CurationError, match=r"not a plain state dict.*save model.state_dict\(\)"):
        load_head(HeadSpec(str(tmp_path / "pickled.pt")))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CurationError, match="not a readable safetensors file"):
        load_head(HeadSpec(str(tmp_path / "bad.safetensors")))
    torch.save({"norm.weight": torch.ones(4), "fc.weight": torch.ones(1, 4)}, tmp_path / "norm.pt")
    with pytest.raises(CurationError, match=r"unexpected tensors norm\.weight \(4,\)"):
        load_head(HeadSpec(str(tmp_path / "norm.pt")))
    path = make_head(tmp_path / "h.safetensors", in_dim=4)
    with pytest.raises(CurationError, match="output_index 1 but the head has 1 output"):
        load_head(HeadSpec(str(path), output_index=1))
    with pytest.raises(CurationError, match=r"takes 4-dim embeddings, got shape \(2, 5\)"):
        load_head(HeadSpec(str(path)))(np.zeros((2, 5)))
