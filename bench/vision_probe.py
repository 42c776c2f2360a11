"""Linear probe: does the policy's vision encoder see where the object is?

The action expert can only place the gripper at the object if the image tokens it attends to say
where the object is: the state holds the hand, not the object. This fits a ridge regression from
the policy's image tokens (the vision encoder + connector output of one frame, flattened in patch
order) to the object's xyz (``sim.object_position``) and the hand's xyz (the state) on every
``--stride``-th frame of the ``--fit`` demos, and reports R² on the ``--test`` demos (other seeds).
A ridge on the raw frame (shrunk to ``--pixels`` px a side) is the reference of what a linear
read-out of the picture itself gets; predicting the fit set's mean scores 0. The ridge strength is
chosen by 4-fold cross-validation on the fit set. Much of the object's spread is which task it is
(each task puts its object in its own region), which the instruction tells the policy anyway, so
the *within-task* columns first subtract each task's fit-set mean from features and targets: they
score what the image says about this episode's object beyond its task.

    python bench/vision_probe.py --policy default --fit data/mw-train4 --test data/mw-held4
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from emcot.policy import EmCoTPolicy
from emcot.training.data.lerobot import LeRobotDataset

OBJECT = "sim.object_position"
LAMBDAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def probe_data(policy: EmCoTPolicy, path: str, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Image-token and raw-pixel features with object and hand xyz for every stride-th frame."""
    dataset = LeRobotDataset(path)
    camera = policy.cameras[0]
    data_camera = camera if camera in dataset.cameras else next(iter(dataset.cameras))
    processor = policy.processor.vision  # the policy's own resize, normalisation and patches
    tokens, pixels, objects, hands, tasks = [], [], [], [], []
    for index in dataset.episode_indices:
        episode = dataset.episode(index)
        position = episode.columns("sim.").get(OBJECT)
        if position is None or episode.states is None:
            raise ValueError(
                f"{path} episode {index} lacks {OBJECT} or a state; record it with emcot collect"
            )
        frames = episode.images(data_camera)
        for t in range(0, len(episode), args.stride):
            patches, grid = processor(frames[t])
            with torch.no_grad():
                (encoded,) = policy.model.encode_images(patches, [grid])
            tokens.append(encoded.float().flatten().numpy())
            small = Image.fromarray(frames[t]).resize((args.pixels, args.pixels), Image.Resampling.BILINEAR)
            pixels.append(np.asarray(small, np.float32).ravel() / 255.0)
            objects.append(np.asarray(position[t], np.float64)[:3])
            hands.append(np.asarray(episode.states[t], np.float64)[:3])
            tasks.append(episode.instruction)
    return {
        "image tokens": np.asarray(tokens),
        "raw pixels": np.asarray(pixels),
        "object": np.asarray(objects),
        "hand": np.asarray(hands),
        "task": np.asarray(tasks),
    }


def within_task(fit: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Both sets with each task's fit-set mean subtracted from every feature and target."""
    out: tuple[dict, dict] = ({"task": fit["task"]}, {"task": test["task"]})
    for key in ("image tokens", "raw pixels", "object", "hand"):
        means = {task: fit[key][fit["task"] == task].mean(0) for task in np.unique(fit["task"])}
        for data, centred in zip((fit, test), out):
            centred[key] = data[key] - np.stack([means[task] for task in data["task"]])
    return out


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Dual-form ridge on standardised features: (feature mean, scale, dual weights, target mean)."""
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    y_mean = y.mean(0)
    kernel = z @ z.T
    alpha = np.linalg.solve(kernel + lam * len(z) * np.eye(len(z)), y - y_mean)
    return mean, scale, z.T @ alpha, y_mean


def predict(model: tuple, x: np.ndarray) -> np.ndarray:
    """Predictions of a fitted :func:`ridge`."""
    mean, scale, weights, y_mean = model
    return ((x - mean) / scale) @ weights + y_mean


def r2(y: np.ndarray, pred: np.ndarray, reference_mean: np.ndarray) -> float:
    """Coefficient of determination, pooled over the xyz columns, against ``reference_mean``."""
    return float(1.0 - ((y - pred) ** 2).sum() / ((y - reference_mean) ** 2).sum())


def choose_lambda(x: np.ndarray, y: np.ndarray, folds: int = 4) -> float:
    """The ridge strength with the best mean cross-validated R² on the fit set."""
    order = np.random.default_rng(0).permutation(len(x))
    parts = np.array_split(order, folds)
    scores = {}
    for lam in LAMBDAS:
        fold_scores = []
        for k in range(folds):
            test = parts[k]
            train = np.concatenate([parts[j] for j in range(folds) if j != k])
            model = ridge(x[train], y[train], lam)
            fold_scores.append(r2(y[test], predict(model, x[test]), y[train].mean(0)))
        scores[lam] = float(np.mean(fold_scores))
    return max(scores, key=lambda lam: scores[lam])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", required=True, help="policy folder or bundled name")
    parser.add_argument("--fit", required=True, help="LeRobot demos the probe is fitted on")
    parser.add_argument("--test", required=True, help="LeRobot demos (other seeds) it is scored on")
    parser.add_argument("--stride", type=int, default=4, help="use every stride-th frame")
    parser.add_argument("--pixels", type=int, default=16, help="side of the raw-pixel reference")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = EmCoTPolicy.load(args.policy)
    start = time.perf_counter()
    fit, test = probe_data(policy, args.fit, args), probe_data(policy, args.test, args)
    print(
        f"{len(fit['object'])} fit frames, {len(test['object'])} test frames "
        f"({time.perf_counter() - start:.0f} s to encode); test R² of a ridge from features to xyz"
    )
    fit_within, test_within = within_task(fit, test)
    print("| features (dims) | object xyz | hand xyz | object, within task | hand, within task |")
    print("|---|---|---|---|---|")
    for features in ("image tokens", "raw pixels"):
        cells = []
        for a, b in ((fit, test), (fit_within, test_within)):
            for target in ("object", "hand"):
                lam = choose_lambda(a[features], a[target])
                model = ridge(a[features], a[target], lam)
                score = r2(b[target], predict(model, b[features]), a[target].mean(0))
                cells.append(f"{score:.3f} (λ={lam:g})")
        print(f"| {features} ({fit[features].shape[1]}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
