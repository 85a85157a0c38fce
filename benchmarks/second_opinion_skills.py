"""The second opinion's skill on a benchmark dataset's labeled images, per seed, without training.

    .venv/bin/python benchmarks/second_opinion_skills.py textures32 400,401,402 --pool 300

The skill (`second_opinion.fit_second_opinion`: chance-corrected cross-validated accuracy of the texture
model on the labeled images) depends on nothing the ensemble learns, so whether a run's gate opens can be
read from its labeled images alone. Issue 12 round 27 used it to find which recorded report runs the gate
change touches. The manifest is read with the project's parser and the images decoded as the worker decodes
them, at `--side` px (the worker's texture features work on 32 px grey thumbnails either way); it gives the
recorded skills of the runs it was checked on (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "job_image"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from autolabel_worker.images import decode_image  # noqa: E402
from autolabel_worker.predict import image_to_array  # noqa: E402
from autolabel_worker.second_opinion import fit_second_opinion  # noqa: E402
from quality_data import write_dataset  # noqa: E402

from autolabel.manifest import parse_manifest  # noqa: E402


def labeled_images(manifest: Path, side: int) -> tuple[torch.Tensor, np.ndarray]:
    """The manifest's labeled images as the worker decodes them, uint8 (n, 3, side, side), and their class
    indices (the worker's order: sorted names)."""
    entries = [e for e in parse_manifest(manifest.read_text().splitlines(), str(manifest)) if e.is_labeled]
    images = [image_to_array(decode_image(Path(e.source).read_bytes(), e.source), (side, side)) for e in entries]
    names = [e.labels[0] for e in entries]
    classes = sorted(set(names))
    return torch.from_numpy(np.stack(images)), np.array([classes.index(n) for n in names], dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("seeds", help="comma-separated")
    parser.add_argument("--pool", type=int, default=300, help="unlabeled images, as the benchmark's runs (0: all)")
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--folder", default=str(ROOT / ".bench" / "skills"))
    args = parser.parse_args()
    for seed in (int(s) for s in args.seeds.split(",")):
        ds = write_dataset(args.dataset, Path(args.folder) / args.dataset, seed, pool=args.pool or None)
        x, y = labeled_images(Path(ds.manifest), args.side)
        opinion = fit_second_opinion(x, y, int(y.max()) + 1, seed)
        print(f"{args.dataset} seed {seed}: skill {opinion.skill:.4f} ({opinion.reason})", flush=True)


if __name__ == "__main__":
    main()
