"""A minimal robot-side control loop for an exported policy.

Loads the TorchScript file with ``torch.jit.load`` alone (none of the project's policy code),
reads its metadata, and drives the simulated env at the policy's control frequency:

    python examples/control_loop.py policy.pt --episodes 3

On a robot, replace the env with the robot's observation and command interfaces: the
observation tensors go in the order of the ``obs_keys`` metadata, with a batch dimension.
Camera frames are resized to the policy's input size with the function that resized the
training data (``dataset.image_size``), so a camera of another resolution sees what the
policy was trained on; ``--camera-size 84`` renders the sim's cameras at 84x84 to show it.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import sim
from datasets.frames import resize_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", help="exported TorchScript file")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=100000)
    parser.add_argument("--no-realtime", action="store_true", help="run as fast as possible")
    parser.add_argument("--camera-size", type=int, help="render the cameras at this size (default: the policy's)")
    args = parser.parse_args()

    extra = {"metadata.json": ""}
    policy = torch.jit.load(args.policy, _extra_files=extra)
    metadata = json.loads(extra["metadata.json"])
    keys, period = metadata["obs_keys"], 1.0 / metadata["control_hz"]
    # uint8 HxWx3 inputs are camera frames; the policy takes them at this size
    frame_sizes = {i["key"]: i["shape"][1] for i in metadata["inputs"] if i["dtype"] == "uint8" and len(i["shape"]) == 4}
    env_kwargs = dict(metadata["env"]["kwargs"])
    if args.camera_size:
        env_kwargs["image_size"] = args.camera_size
    env = sim.make_env(metadata["env"]["name"], **env_kwargs)
    torch.set_num_threads(1)
    for episode in range(args.episodes):
        obs, _ = env.reset(seed=args.seed + episode)
        steps, done, info = 0, False, {}
        while not done:
            tick = time.perf_counter()
            frames = {k: resize_frames(np.asarray(obs[k]), size) for k, size in frame_sizes.items()}
            with torch.no_grad():
                action = policy([torch.from_numpy(np.asarray(frames.get(k, obs[k])))[None] for k in keys])[0].numpy()
            obs, _, terminated, truncated, info = env.step(action)
            done, steps = terminated or truncated, steps + 1
            if not args.no_realtime:
                time.sleep(max(0.0, period - (time.perf_counter() - tick)))
        print(f"episode {episode}: {'success' if info['is_success'] else 'failure'} after {steps} steps")
    env.close()


if __name__ == "__main__":
    main()
