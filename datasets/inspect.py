"""Looking at a dataset before training: ``python -m datasets.inspect file=FILE out=DIR``.

Prints what a robomimic-format file holds (ours or robomimic's own): demos and transitions
per filter key, observation keys with shapes and dtypes, action ranges, reward and done
statistics, success rate, episode lengths and the env it was made in. Writes into ``out``
(default ``outputs/inspect/<file name without suffix>``) ``summary.json`` (the same figures),
``contact_sheet.png`` (rows: demos spread over the file; columns: evenly spaced time steps;
every camera side by side in each cell) and ``demos.mp4`` (those demos played back from their
stored images, cameras side by side). A file without image observations gets no picture.

A demo succeeded if any of its rewards is positive (:func:`datasets.offline.succeeded`):
robomimic's ``done_mode`` 1 and 2 set the last ``done`` of failed demos too.

Exit status: 2 for bad input (a missing file, one that is not HDF5 or not a dataset), 3 when
an output cannot be written.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import cv2
import h5py
import hydra
from hydra.core.hydra_config import HydraConfig
import imageio.v3 as iio
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from tqdm import tqdm

from datasets.atomic import atomic_path, write_bytes_atomically
from datasets.command_line import check_overrides, remove_empty_run_dir
from datasets.offline import ACTION_TOLERANCE, REQUIRED_DEMO_KEYS, succeeded
from datasets.replay import is_image
from datasets.robomimic_hdf5 import demo_names, open_dataset, read_env_args

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MIN_CELL_HEIGHT = 128  # small frames (48 px) are scaled up by a whole factor to stay legible
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.4
LABEL_HEIGHT = 18
ROW_LABEL_WIDTH = 150
GAP = 2  # pixels between the cells of a contact sheet
BACKGROUND = 32
DEFAULT_FPS = 10.0


@dataclass
class InspectConfig:
    file: Optional[str] = None  # the HDF5 dataset to inspect
    out: Optional[str] = None  # null: outputs/inspect/<file name without suffix>
    demos: int = 4  # demos on the contact sheet and in the video, spread evenly over the file
    columns: int = 8  # time steps per demo on the contact sheet


ConfigStore.instance().store(name="inspect_schema", node=InspectConfig)


@dataclass
class _Running:
    """Min, max and sum of arrays seen one demo at a time, so long files are never held whole."""

    low: np.ndarray | None = None
    high: np.ndarray | None = None
    total: np.ndarray | None = None
    count: int = 0

    def add(self, values: np.ndarray) -> None:
        values = values.reshape(len(values), -1).astype(np.float64)
        if not len(values):
            return
        low, high, total = values.min(axis=0), values.max(axis=0), values.sum(axis=0)
        if self.count:
            low, high, total = np.minimum(self.low, low), np.maximum(self.high, high), self.total + total
        self.low, self.high, self.total = low, high, total
        self.count += len(values)

    def figures(self) -> dict[str, list[float]]:
        return {"min": self.low.tolist(), "max": self.high.tolist(), "mean": (self.total / self.count).tolist()}


def _obs_spec(group: h5py.Group) -> dict[str, dict[str, Any]]:
    return {key: {"shape": list(group[key].shape[1:]), "dtype": str(group[key].dtype)} for key in sorted(group)}


def _group_figures(names: list[str], lengths: dict[str, int], success: dict[str, bool]) -> dict[str, Any]:
    return {
        "demos": len(names),
        "transitions": sum(lengths[n] for n in names),
        "success_rate": float(np.mean([success[n] for n in names])) if names else None,
    }


def _is_camera(spec: dict[str, Any]) -> bool:
    return is_image(spec) and spec["shape"][-1] == 3


def summarize(f: h5py.File) -> dict[str, Any]:
    """The figures of an open dataset. Layout errors (no demos, a mask naming missing demos)
    come before the pass over the demos, which shows a progress bar when it takes over a second."""
    path = Path(f.filename)
    names = demo_names(f)
    filters = {key: demo_names(f, key) for key in (f["mask"] if "mask" in f else [])}
    problems = []
    try:
        env_args: dict[str, Any] | None = read_env_args(f)
    except ValueError as error:
        env_args = None
        problems.append(str(error))
    first = f[f"data/{names[0]}"]
    if "obs" not in first:
        raise ValueError(f"{path}: data/{names[0]}: missing 'obs'; a dataset stores each demo's observations there")
    obs_spec = _obs_spec(first["obs"])
    problems += [f"obs/{key} holds {spec['dtype']} images of shape {spec['shape']}: training needs uint8 HxWx3"
                 for key, spec in obs_spec.items() if len(spec["shape"]) == 3 and not _is_camera(spec)]

    actions, rewards = _Running(), _Running()
    lengths: dict[str, int] = {}
    success: dict[str, bool] = {}
    positive_steps = done_steps = ends_done = done_early = with_next_obs = 0
    for name in tqdm(names, desc="inspect", unit="demo", delay=1.0):
        where = f"{path}: data/{name}"
        try:
            demo = f[f"data/{name}"]
            for required in REQUIRED_DEMO_KEYS:
                if required not in demo:
                    raise ValueError(f"{where}: missing '{required}'")
            demo_actions = demo["actions"][()]
            demo_rewards = demo["rewards"][()].reshape(-1)
            dones = demo["dones"][()].reshape(-1) > 0 if "dones" in demo else np.zeros(len(demo_actions), bool)
            spec = _obs_spec(demo["obs"])
            with_next_obs += "next_obs" in demo
        except (OSError, KeyError, RuntimeError) as error:  # h5py's errors for damaged objects
            raise ValueError(f"{where}: cannot be read ({error})") from None
        if spec != obs_spec:
            problems.append(f"data/{name}/obs differs from data/{names[0]}/obs in its keys, shapes or dtypes")
        if not (np.all(np.isfinite(demo_actions)) and np.all(np.isfinite(demo_rewards))):
            problems.append(f"data/{name}: non-finite actions or rewards")
        lengths[name] = len(demo_actions)
        success[name] = succeeded(demo_rewards)
        actions.add(demo_actions)
        rewards.add(demo_rewards)
        positive_steps += int((demo_rewards > 0).sum())
        done_steps += int(dones.sum())
        ends_done += bool(len(dones) and dones[-1])
        done_early += bool(dones[:-1].any())

    transitions = sum(lengths.values())
    if not transitions:
        raise ValueError(f"{path}: its demos hold no steps; a dataset needs at least one transition")
    if "total" in f["data"].attrs and int(f["data"].attrs["total"]) != transitions:
        problems.append(f"data attr 'total' is {int(f['data'].attrs['total'])}, the demos hold {transitions} transitions")
    action_figures = actions.figures()
    if max(-min(action_figures["min"]), max(action_figures["max"])) > 1.0 + ACTION_TOLERANCE:
        problems.append("actions exceed [-1, 1], which training refuses: scale them into the env's action space")
    all_lengths = np.array(list(lengths.values()))
    return {
        "file": str(path),
        "env": env_args,
        "demos": len(names),
        "transitions": transitions,
        "filter_keys": {"all": _group_figures(names, lengths, success),
                        **{key: _group_figures(members, lengths, success) for key, members in filters.items()}},
        "obs": {key: {**spec, "camera": _is_camera(spec)} for key, spec in obs_spec.items()},
        "demos_with_next_obs": with_next_obs,
        "actions": {"dim": len(action_figures["min"]), **action_figures},
        "rewards": {**{key: values[0] for key, values in rewards.figures().items()}, "positive_steps": positive_steps},
        "dones": {"steps": done_steps, "demos_ending_with_done": ends_done, "demos_with_done_before_last_step": done_early},
        "success": {"demos": sum(success.values()), "rate": float(np.mean(list(success.values()))),
                    "rule": "a demo succeeded if any of its rewards is positive"},
        "lengths": {"min": int(all_lengths.min()), "mean": float(all_lengths.mean()), "max": int(all_lengths.max())},
        "problems": problems,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the lines the command prints."""
    lines = [f"{summary['file']}: {summary['demos']} demos, {summary['transitions']} transitions"]
    env = summary["env"]
    lines.append(f"env: {env.get('env_name')!r}, env_kwargs {json.dumps(env.get('env_kwargs', {}))}" if env
                 else "env: not recorded")
    lines.append(f"{'filter key':14s} {'demos':>7s} {'transitions':>12s} {'success rate':>13s}")
    for key, group in summary["filter_keys"].items():
        rate = "-" if group["success_rate"] is None else f"{group['success_rate']:.3f}"
        lines.append(f"  {'(all)' if key == 'all' else key:12s} {group['demos']:7d} {group['transitions']:12d} {rate:>13s}")
    stored = summary["demos_with_next_obs"]
    lines.append("observations, next_obs " + (
        "stored" if stored == summary["demos"] else
        "not stored (training uses obs shifted by one step)" if stored == 0 else
        f"stored in {stored} of {summary['demos']} demos") + ":")
    for key, spec in summary["obs"].items():
        lines.append(f"  {key:28s} {spec['dtype']:8s} {str(spec['shape']):14s}{' camera' if spec['camera'] else ''}".rstrip())
    actions = summary["actions"]
    lines.append(f"actions ({actions['dim']}-d): {'min':>8s} {'max':>8s} {'mean':>8s}")
    for dim, (low, high, mean) in enumerate(zip(actions["min"], actions["max"], actions["mean"])):
        lines.append(f"  {dim:<12d} {low:8.3f} {high:8.3f} {mean:8.3f}")
    rewards, dones = summary["rewards"], summary["dones"]
    lines.append(f"rewards: min {rewards['min']:g}, max {rewards['max']:g}, mean {rewards['mean']:.4g}, "
                 f"{rewards['positive_steps']} steps > 0")
    lines.append(f"dones: {dones['steps']} steps; {dones['demos_ending_with_done']} demos end with done, "
                 f"{dones['demos_with_done_before_last_step']} have one before their last step")
    success = summary["success"]
    lines.append(f"success rate: {success['rate']:.3f} ({success['demos']} of {summary['demos']} demos; {success['rule']})")
    lengths = summary["lengths"]
    lines.append(f"episode lengths: min {lengths['min']}, mean {lengths['mean']:.1f}, max {lengths['max']}")
    lines.append("problems: " + ("none" if not summary["problems"] else f"{len(summary['problems'])}"))
    lines += [f"  {problem}" for problem in summary["problems"][:10]]
    if len(summary["problems"]) > 10:
        lines.append(f"  ... ({len(summary['problems']) - 10} more in summary.json)")
    return "\n".join(lines)


def spread(names: list[str], count: int) -> list[str]:
    """``count`` of ``names`` evenly spaced, the first and the last included."""
    picks = np.linspace(0, len(names) - 1, min(count, len(names))).round().astype(int)
    return [names[i] for i in np.unique(picks)]


def side_by_side(images: list[np.ndarray], scale: int) -> np.ndarray:
    """One frame of every camera, left to right at a common height, scaled up ``scale`` times."""
    height = max(image.shape[0] for image in images)
    frame = np.concatenate([np.pad(image, ((0, height - image.shape[0]), (0, 0), (0, 0))) for image in images], axis=1)
    return frame.repeat(scale, axis=0).repeat(scale, axis=1)


def _text(image: np.ndarray, text: str, x: int, y: int) -> None:
    """White text in the label line at (x, y), shrunk to fit the image's width (narrow videos)."""
    width = cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0]
    scale = min(FONT_SCALE, FONT_SCALE * (image.shape[1] - x - 6) / width)
    cv2.putText(image, text, (x + 3, y + LABEL_HEIGHT - 5), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _strip(width: int, height: int = LABEL_HEIGHT) -> np.ndarray:
    return np.full((height, width, 3), BACKGROUND, np.uint8)


def contact_sheet(demos: dict[str, dict[str, np.ndarray]], labels: dict[str, str], columns: int, scale: int) -> np.ndarray:
    """Rows: demos; columns: ``columns`` evenly spaced time steps (fewer for shorter demos),
    each cell every camera side by side."""
    rows = []
    for name, cameras in demos.items():
        steps = len(next(iter(cameras.values())))
        times = np.unique(np.linspace(0, steps - 1, min(columns, steps)).round().astype(int))
        cells = [np.pad(side_by_side([frames[t] for frames in cameras.values()], scale), ((0, 0), (0, GAP), (0, 0)),
                        constant_values=BACKGROUND) for t in times]
        cells += [np.full_like(cells[0], BACKGROUND)] * (columns - len(cells))  # short demos: blank cells keep rows aligned
        images = np.concatenate(cells, axis=1)
        header = _strip(images.shape[1])
        for column, t in enumerate(times):
            _text(header, f"t={t}", column * cells[0].shape[1], 0)
        block = np.concatenate([header, images])
        left = _strip(ROW_LABEL_WIDTH, block.shape[0])
        _text(left, name, 0, block.shape[0] // 2 - LABEL_HEIGHT)
        _text(left, labels[name], 0, block.shape[0] // 2)
        rows.append(np.concatenate([left, block], axis=1))
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=BACKGROUND) for row in rows]
    title = _strip(width)
    _text(title, "cameras, left to right: " + ", ".join(next(iter(demos.values()))), 0, 0)
    return np.concatenate([title, *rows])


def playback_frames(demos: dict[str, dict[str, np.ndarray]], labels: dict[str, str], scale: int) -> Iterator[np.ndarray]:
    """Every step of every demo, cameras side by side under a line naming the demo and step."""
    for name, cameras in demos.items():
        steps = len(next(iter(cameras.values())))
        for t in range(steps):
            frame = side_by_side([frames[t] for frames in cameras.values()], scale)
            header = _strip(frame.shape[1])
            _text(header, f"{name} ({labels[name]}) t={t}", 0, 0)
            frame = np.concatenate([header, frame])
            # H.264 in yuv420p needs even sides
            yield np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)))


def write_png(path: Path, image: np.ndarray) -> None:
    """An RGB image as a PNG file, written atomically."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode {path} as PNG")
    write_bytes_atomically(path, encoded.tobytes())


def write_mp4(path: Path, frames: Iterator[np.ndarray], fps: float) -> int:
    """Stream ``frames`` into an H.264 mp4 (atomically); returns the frame count."""
    count = 0
    with atomic_path(path) as tmp, iio.imopen(tmp, "w", extension=".mp4", plugin="FFMPEG") as file:
        # the temporary name does not end in .mp4, so ffmpeg is told the container
        with file.legacy_get_writer(fps=fps, macro_block_size=2, output_params=["-f", "mp4"]) as writer:
            for frame in frames:
                writer.append_data(frame)
                count += 1
    return count


def inspect_dataset(config: InspectConfig) -> dict[str, Any]:
    """Print the summary of ``config.file`` and write the pictures and ``summary.json`` into
    the output folder; returns the summary."""
    if not config.file:
        raise ValueError("no dataset given: python -m datasets.inspect file=PATH [out=DIR]")
    if config.demos < 1 or config.columns < 1:
        raise ValueError(f"demos and columns must be positive, got demos={config.demos} columns={config.columns}")
    path = Path(config.file).expanduser()
    out = Path(config.out).expanduser() if config.out else Path("outputs") / "inspect" / path.stem
    with open_dataset(path) as f:
        names = demo_names(f)  # a file that is no dataset fails here, before the output folder is made
        out.mkdir(parents=True, exist_ok=True)
        summary = summarize(f)
        print(format_summary(summary), flush=True)
        cameras = [key for key, spec in summary["obs"].items() if spec["camera"]]
        written = {}
        if cameras:
            shown = spread(names, config.demos)
            try:
                demos = {name: {key: f[f"data/{name}/obs/{key}"][()] for key in cameras} for name in shown}
                labels = {name: "success" if succeeded(f[f"data/{name}/rewards"][()]) else "failure" for name in shown}
            except (OSError, KeyError, RuntimeError) as error:
                raise ValueError(f"{path}: the images of demos {shown} cannot be read ({error})") from None
            height = max(summary["obs"][key]["shape"][0] for key in cameras)
            scale = max(1, -(-MIN_CELL_HEIGHT // height))  # the whole factor that reaches MIN_CELL_HEIGHT
            write_png(out / "contact_sheet.png", contact_sheet(demos, labels, config.columns, scale))
            env_kwargs = (summary["env"] or {}).get("env_kwargs", {})
            # ours record control_hz, robosuite's control_freq
            fps = float(env_kwargs.get("control_hz", env_kwargs.get("control_freq", DEFAULT_FPS)))
            frames = write_mp4(out / "demos.mp4", playback_frames(demos, labels, scale), fps)
            written = {"contact_sheet": str(out / "contact_sheet.png"), "video": str(out / "demos.mp4"),
                       "shown_demos": shown, "video_frames": frames, "video_fps": fps}
            print(f"wrote {written['contact_sheet']} ({len(shown)} demos x {config.columns} time steps; "
                  f"cameras: {', '.join(cameras)})")
            print(f"wrote {written['video']} ({len(shown)} demos, {frames} frames at {fps:g} fps)")
        else:
            print("no camera observations: no contact sheet or video")
    summary.update(written)
    write_bytes_atomically(out / "summary.json", json.dumps(summary, indent=2).encode())
    print(f"wrote {out / 'summary.json'}")
    return summary


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "configs"), config_name="inspect")
def main(cfg) -> None:
    config: InspectConfig = OmegaConf.to_object(cfg)
    try:
        inspect_dataset(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        remove_empty_run_dir(Path(HydraConfig.get().runtime.output_dir))
        sys.exit(2)
    except OSError as error:  # an output that cannot be written: a full disk, no permission
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    check_overrides(sys.argv[1:], PROJECT_ROOT / "configs", "inspect")
    main()
