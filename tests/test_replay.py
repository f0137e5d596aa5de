import numpy as np
import pytest
import torch

from datasets.replay import ReplayBuffer, sample_offline_online

SPEC = {"agentview_image": {"shape": [2, 2, 3], "dtype": "uint8"}, "robot0_eef_pos": {"shape": [1], "dtype": "float32"}}


def _episode(first: int, rewards: list[float], terminals: list[float], timeout: bool) -> dict:
    """Observation t of this episode is the number first + t, in the frame and the low-dim key."""
    steps = len(rewards)
    values = first + np.arange(steps + 1)
    frames = np.broadcast_to(values[:, None, None, None], (steps + 1, 2, 2, 3)).astype(np.uint8)
    lowdim = values[:, None].astype(np.float32)
    obs = {"agentview_image": frames[:-1], "robot0_eef_pos": lowdim[:-1]}
    next_obs = {"agentview_image": frames[1:], "robot0_eef_pos": lowdim[1:]}
    timeouts = np.zeros(steps, np.float32)
    timeouts[-1] = float(timeout)
    return dict(obs=obs, next_obs=next_obs, actions=np.zeros((steps, 1), np.float32),
                rewards=np.asarray(rewards, np.float32), terminals=np.asarray(terminals, np.float32),
                timeouts=timeouts, mc_returns=np.zeros(steps, np.float32))


@pytest.fixture
def replay() -> ReplayBuffer:
    buffer = ReplayBuffer(SPEC, 1, 20, 30)
    buffer.add_episode(**_episode(0, [1, 2, 3, 4], [0, 0, 0, 1], timeout=False))  # rows 0-3, success at the end
    buffer.add_episode(**_episode(10, [5, 6, 7], [0, 1, 0], timeout=True))  # rows 4-6, a terminal in the middle
    return buffer


def test_one_step_batches_are_the_stored_transitions(replay):
    batch = replay.gather(np.arange(7), gamma=0.9)
    np.testing.assert_array_equal(batch.rewards, [1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(batch.next_obs["robot0_eef_pos"][:, 0], [1, 2, 3, 4, 11, 12, 13])
    np.testing.assert_array_equal(batch.next_obs["agentview_image"][:, 0, 0, 0], [1, 2, 3, 4, 11, 12, 13])
    np.testing.assert_allclose(batch.discounts, np.full(7, 0.9))  # always present: gamma for one step


def test_n_step_batches_stop_at_terminals_and_episode_ends(replay):
    batch = replay.gather(np.array([0, 2, 3, 4, 5, 6]), gamma=0.5, n_step=3)
    np.testing.assert_allclose(batch.rewards, [1 + 0.5 * 2 + 0.25 * 3, 3 + 0.5 * 4, 4, 5 + 0.5 * 6, 6, 7])
    np.testing.assert_allclose(batch.discounts, [0.125, 0.25, 0.5, 0.25, 0.5, 0.5])
    np.testing.assert_array_equal(batch.terminals, [0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(batch.timeouts, [0, 0, 0, 0, 0, 1])
    # the bootstrap state is the one after the last step taken, never across an episode boundary
    np.testing.assert_array_equal(batch.next_obs["robot0_eef_pos"][:, 0], [3, 4, 4, 12, 12, 13])
    np.testing.assert_array_equal(batch.next_obs["agentview_image"][:, 0, 0, 0], [3, 4, 4, 12, 12, 13])
    np.testing.assert_array_equal(batch.obs["robot0_eef_pos"][:, 0], [0, 2, 3, 10, 11, 12])
    with pytest.raises(ValueError, match="n_step must be >= 1"):
        replay.gather(np.array([0]), gamma=0.5, n_step=0)


def test_state_dict_round_trips_the_filled_part(replay):
    clone = ReplayBuffer(SPEC, 1, 20, 30)
    clone.load_state_dict(replay.state_dict())
    assert (clone.size, clone.num_frames, clone.num_episodes) == (7, 9, 2)
    index = np.arange(7)
    original, restored = replay.gather(index, 0.9, n_step=2), clone.gather(index, 0.9, n_step=2)
    np.testing.assert_array_equal(restored.obs["agentview_image"], original.obs["agentview_image"])
    np.testing.assert_array_equal(restored.next_obs["robot0_eef_pos"], original.next_obs["robot0_eef_pos"])
    np.testing.assert_array_equal(restored.rewards, original.rewards)
    with pytest.raises(ValueError, match="does not fit"):
        ReplayBuffer(SPEC, 1, 5, 30).load_state_dict(replay.state_dict())


def _constant_buffer(action_value: float, size: int) -> ReplayBuffer:
    spec = {"x": {"shape": [2], "dtype": "float32"}}
    buffer = ReplayBuffer(spec, 1, size, 2 * size)
    zeros = np.zeros(size, np.float32)
    buffer.add_episode({"x": np.zeros((size, 2), np.float32)}, {"x": np.zeros((size, 2), np.float32)},
                       actions=np.full((size, 1), action_value, np.float32), rewards=zeros, terminals=zeros,
                       timeouts=zeros, mc_returns=zeros)
    return buffer


@pytest.mark.parametrize("ratio, offline_count", [(0.5, 128), (0.25, 64), (0.0, 0), (1.0, 256)])
def test_mixing_ratio_is_honoured(ratio, offline_count):
    offline, online = _constant_buffer(1.0, 50), _constant_buffer(-1.0, 50)
    batch = sample_offline_online(offline, online, 256, torch.Generator().manual_seed(0), 0.99, offline_ratio=ratio)
    assert batch.actions.shape == (256, 1) and batch.obs["x"].shape == (256, 2) and batch.discounts.shape == (256,)
    assert int((batch.actions == 1.0).sum()) == offline_count
    np.testing.assert_array_equal(batch.online, (batch.actions[:, 0] == -1.0).float())  # marks the source
    empty_online = ReplayBuffer({"x": {"shape": [2], "dtype": "float32"}}, 1, 10, 20)
    assert (sample_offline_online(offline, empty_online, 32, torch.Generator().manual_seed(0), 0.99, offline_ratio=ratio).actions == 1.0).all()
    assert (sample_offline_online(None, online, 32, torch.Generator().manual_seed(0), 0.99, offline_ratio=ratio).actions == -1.0).all()


def test_uniform_sampling_treats_both_buffers_as_one():
    # 300 offline and 100 online transitions: a uniform draw over the union takes 3/4 offline
    offline, online = _constant_buffer(1.0, 300), _constant_buffer(-1.0, 100)
    rng = torch.Generator().manual_seed(0)
    batches = [sample_offline_online(offline, online, 256, rng, 0.99, mode="uniform") for _ in range(50)]
    shares = [float((batch.actions == 1.0).float().mean()) for batch in batches]
    assert np.mean(shares) == pytest.approx(0.75, abs=0.01) and np.std(shares) > 0  # random, not a fixed split
    for batch in batches[:5]:  # every row comes whole from its buffer, and says which
        np.testing.assert_array_equal(batch.online, (batch.actions[:, 0] == -1.0).float())
        np.testing.assert_array_equal(batch.mc_returns, torch.zeros(256))
    with pytest.raises(ValueError, match="unknown sampling mode 'half'"):
        sample_offline_online(offline, online, 8, rng, 0.99, mode="half")


def test_the_same_generator_state_draws_the_same_batch(replay):
    first = replay.sample(16, torch.Generator().manual_seed(3), 0.9, n_step=2)
    again = replay.sample(16, torch.Generator().manual_seed(3), 0.9, n_step=2)
    other = replay.sample(16, torch.Generator().manual_seed(4), 0.9, n_step=2)
    assert isinstance(first.rewards, torch.Tensor) and first.rewards.device == replay.device
    torch.testing.assert_close(first.rewards, again.rewards)
    torch.testing.assert_close(first.obs["agentview_image"], again.obs["agentview_image"])
    assert not torch.equal(first.obs["robot0_eef_pos"], other.obs["robot0_eef_pos"])


def test_obs_spec_is_the_same_for_arrays_and_tensors():
    from datasets.replay import obs_spec_of

    obs = {"agentview_image": np.zeros((2, 4, 4, 3), np.uint8), "robot0_eef_pos": np.zeros((2, 3), np.float32)}
    expected = {"agentview_image": {"shape": [4, 4, 3], "dtype": "uint8"}, "robot0_eef_pos": {"shape": [3], "dtype": "float32"}}
    assert obs_spec_of(obs) == obs_spec_of({k: torch.from_numpy(v) for k, v in obs.items()}) == expected


def test_input_image_size_is_read_off_the_spec():
    from datasets.replay import input_image_size

    camera = {"shape": [48, 48, 3], "dtype": "uint8"}
    assert input_image_size({"agentview_image": camera, "robot0_eef_pos": {"shape": [3], "dtype": "float32"}}) == 48
    assert input_image_size({"robot0_eef_pos": {"shape": [3], "dtype": "float32"}}) is None
    with pytest.raises(ValueError, match=r"cameras of different sizes \[48, 84\]"):
        input_image_size({"a_image": camera, "b_image": {"shape": [84, 84, 3], "dtype": "uint8"}})
