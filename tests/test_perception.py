import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets.replay import TRANSITION_KEYS, ReplayBuffer
from perception.augment import random_shift
from perception.encoders import EncoderConfig, ObservationEncoder, SpatialSoftmax

SPEC = {"agentview_image": {"shape": [48, 48, 3], "dtype": "uint8"}, "robot0_eef_pos": {"shape": [3], "dtype": "float32"}}


def test_random_shift_crops_an_edge_padded_window_per_sample():
    images = torch.randint(0, 256, (6, 10, 12, 3), dtype=torch.uint8)  # (B, H, W, C), as observed
    shifted = random_shift(images, pad=2, generator=torch.Generator().manual_seed(0))
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (2, 2, 2, 2), mode="replicate").permute(0, 2, 3, 1)
    assert shifted.dtype == torch.uint8 and shifted.shape == images.shape
    offsets = []
    for b in range(6):
        matches = [(i, j) for i in range(5) for j in range(5) if torch.equal(shifted[b].float(), padded[b, i : i + 10, j : j + 12])]
        assert matches, f"sample {b} is not a window of the padded image"
        offsets.append(matches[0])
    assert len(set(offsets)) > 1  # independent per sample
    assert torch.equal(random_shift(images, pad=0), images)


def test_conv_encoder_fuses_low_dimensional_keys():
    encoder = ObservationEncoder(SPEC, EncoderConfig())
    obs = {"agentview_image": torch.randint(0, 256, (5, 48, 48, 3), dtype=torch.uint8), "robot0_eef_pos": torch.randn(5, 3)}
    features = encoder(obs, augment=True)
    assert features.shape == (5, encoder.output_dim) == (5, 64 + 3)
    torch.testing.assert_close(features[:, -3:], obs["robot0_eef_pos"])
    assert torch.equal(encoder(obs), encoder(obs))  # no augmentation at evaluation


def test_bf16_image_trunk_keeps_float32_features_and_weights():
    torch.manual_seed(0)
    encoder = ObservationEncoder(SPEC, EncoderConfig())
    obs = {"agentview_image": torch.randint(0, 256, (5, 48, 48, 3), dtype=torch.uint8), "robot0_eef_pos": torch.randn(5, 3)}
    full = encoder(obs)
    encoder.bf16 = True
    half = encoder(obs)
    assert half.dtype == torch.float32
    assert not torch.equal(half, full)  # the trunk did compute in bfloat16 (8 mantissa bits) ...
    torch.testing.assert_close(half, full, rtol=0, atol=0.05)  # ... close to float32 in tanh units
    torch.testing.assert_close(half[:, -3:], obs["robot0_eef_pos"])  # low-dimensional keys untouched
    half.sum().backward()
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in encoder.parameters() if p.grad is not None)
    assert "bf16" not in str(list(encoder.state_dict()))  # a speed setting, not part of the weights


def test_lowdim_mode_is_plain_concatenation():
    spec = {"robot0_eef_pos": {"shape": [3], "dtype": "float32"}, "object": {"shape": [13], "dtype": "float32"}}
    encoder = ObservationEncoder(spec, EncoderConfig())
    assert encoder.output_dim == 16 and not list(encoder.parameters())


def test_lowdim_keys_are_standardised_with_dataset_statistics():
    spec = {"robot0_eef_pos": {"shape": [3], "dtype": "float32"}, "object": {"shape": [2], "dtype": "float32"}}
    buffer = ReplayBuffer(spec, 1, 100, 200)
    rng = np.random.default_rng(0)
    obs = {"robot0_eef_pos": rng.normal(1.0, 0.05, (50, 3)).astype(np.float32),
           "object": np.stack([rng.normal(-2.0, 3.0, 50), np.full(50, 0.8)], axis=1).astype(np.float32)}
    steps = {key: np.zeros(50, np.float32) for key in TRANSITION_KEYS[1:]}
    buffer.add_episode(obs, obs, actions=np.zeros((50, 1), np.float32), **steps)
    encoder = ObservationEncoder(spec, EncoderConfig())
    encoder.set_lowdim_normalization(buffer.lowdim_stats())
    features = encoder({k: torch.as_tensor(v) for k, v in obs.items()}).numpy()
    # Keys in sorted order: object, then robot0_eef_pos; the constant column stays finite (0).
    np.testing.assert_allclose(features[:, [0, 2, 3, 4]].mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(features[:, [0, 2, 3, 4]].std(0), 1.0, atol=1e-3)
    np.testing.assert_allclose(features[:, 1], 0.0, atol=1e-4)
    clone = ObservationEncoder(spec, EncoderConfig())
    clone.load_state_dict(encoder.state_dict())  # the statistics travel with the weights
    torch.testing.assert_close(clone.lowdim_std, encoder.lowdim_std)
    with pytest.raises(ValueError, match="robot0_eef_pos"):
        encoder.set_lowdim_normalization({"object": (np.zeros(2), np.ones(2))})


def test_spatial_softmax_returns_the_peak_coordinates():
    keypoints = SpatialSoftmax(in_channels=2, keypoints=2)
    with torch.no_grad():
        keypoints.project.weight.copy_(torch.eye(2).view(2, 2, 1, 1) * 100.0)
        keypoints.project.bias.zero_()
    features = torch.zeros(1, 2, 5, 9)
    features[0, 0, 1, 6] = 1.0  # row 1 of 5 -> y = -0.5; column 6 of 9 -> x = 0.5
    features[0, 1, 4, 0] = 1.0  # bottom-left corner -> (x, y) = (-1, 1)
    torch.testing.assert_close(keypoints(features), torch.tensor([[0.5, -0.5, -1.0, 1.0]]), atol=1e-3, rtol=0)


def test_conv_keypoint_head_and_strides():
    encoder = ObservationEncoder(SPEC, EncoderConfig(head="keypoints", strides=[2, 2, 1], keypoints=8, feature_dim=16))
    obs = {"agentview_image": torch.randint(0, 256, (3, 48, 48, 3), dtype=torch.uint8), "robot0_eef_pos": torch.zeros(3, 3)}
    assert encoder(obs, augment=True).shape == (3, 19)
    assert encoder.trunks["agentview_image"].convs(torch.zeros(1, 3, 48, 48)).shape[-2:] == (12, 12)
    with pytest.raises(ValueError, match="one stride per conv layer"):
        ObservationEncoder(SPEC, EncoderConfig(strides=[2, 2]))
    with pytest.raises(ValueError, match="unknown conv encoder head"):
        ObservationEncoder(SPEC, EncoderConfig(head="mean"))


def test_resnet18_encoder_runs_on_cpu():
    encoder = ObservationEncoder(SPEC, EncoderConfig(name="resnet18", keypoints=8, feature_dim=16))
    obs = {"agentview_image": torch.randint(0, 256, (2, 48, 48, 3), dtype=torch.uint8), "robot0_eef_pos": torch.zeros(2, 3)}
    assert encoder(obs, augment=True).shape == (2, 19)


def test_torchvision_imports_in_a_fresh_process():
    code = ("from perception.torchvision_compat import import_torchvision; tv = import_torchvision(); "
            "import torch; m = tv.models.resnet18(weights=None).eval(); print(m(torch.zeros(1, 3, 64, 64)).shape)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 1000])" in result.stdout
