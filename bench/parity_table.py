"""Worst per-layer relative error and embedding cosine of every architecture, PyTorch reference vs the
converted Paddle model, as a table (the README's parity table).

    python bench/parity_table.py [--archs r18,vit_t,...] [--large] [--faces ../shared/data/small_lfw.bin]
                                 [--batch 8]

The default is every registered architecture with distinct weights up to 200 M of them (``--large`` adds
r2060, vit_l and vit_h, which need tens of GB and hours here). Each architecture gets the calibrated, seeded demo weights (converters/demo.py). Stages: eval-mode
forward on seeded images and on real faces (float32), train-mode forward (batch statistics, float32),
the running-statistics update after it (Paddle's biased variance corrected exactly), and eval-mode
forward in float64. A ViT's train-mode pass gets the same patch-masking noise and drop-path masks in both
frameworks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", help="comma-separated registry names (default: see above)")
    parser.add_argument("--large", action="store_true", help="include the architectures over 200 M weights")
    parser.add_argument("--faces", default=str(ROOT.parent / "shared" / "data" / "small_lfw.bin"))
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    from converters.runtime import set_threads

    set_threads(None)
    from tabulate import tabulate

    from converters.demo import demo_state_dict
    from converters.inputs import faces_from_bin, seeded_images
    from converters.mapping import torch_to_paddle
    from converters.models import paddle_model, torch_model
    from converters.parity import compare_forward, compare_train_forward

    faces = faces_from_bin(args.faces, args.batch) if Path(args.faces).is_file() else None
    seeded = seeded_images(args.batch, seed=0)
    import numpy as np

    from parity_tests.archs import distinct_archs

    archs = args.archs.split(",") if args.archs else distinct_archs(False) + (distinct_archs(True) if args.large
                                                                                 else [])
    rows = []
    for arch in archs:
        start = time.perf_counter()
        arrays = demo_state_dict(arch, seed=1)
        weights = torch_to_paddle(arrays, arch, 512, "demo")

        def pair(dtype="float32", arch=arch, arrays=arrays, weights=weights):
            return torch_model(arch, arrays, dtype=dtype), paddle_model(arch, weights, dtype=dtype)

        ref, out = pair()
        on_seeded = compare_forward(ref, out, seeded)
        on_faces = compare_forward(ref, out, faces) if faces is not None else None
        ref, out = pair()
        if hasattr(ref, "inject_randomness"):  # a ViT: identical masks in both frameworks
            rng = np.random.default_rng(3)
            noise = rng.random((args.batch, ref.num_patches))
            keep = (rng.random((len(ref.blocks), 2, args.batch)) > 0.3).astype(np.float32)
            ref.inject_randomness(noise, keep)
            out.inject_randomness(noise, keep)
        train, stats = compare_train_forward(ref, out, seeded)
        f64 = compare_forward(*pair("float64"), seeded)
        reports = [on_seeded, on_faces, train, stats, f64]
        ok = all(r.passed for r in reports if r is not None)

        def worst(report):
            return "—" if report is None else f"{report.worst.rel:.1e} ({report.worst.layer})"

        rows.append([arch, len(on_seeded.rows), worst(on_seeded), f"{on_seeded.embedding_cosine:.9f}",
                     worst(on_faces), "—" if on_faces is None else f"{on_faces.embedding_cosine:.9f}",
                     worst(train), worst(stats), f"{f64.worst.rel:.1e}", "PASS" if ok else "FAIL"])
        print(f"{arch}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print(tabulate(rows, headers=["arch", "layers", "eval worst rel (seeded)", "emb. cosine (seeded)",
                                  "eval worst rel (faces)", "emb. cosine (faces)", "train-mode worst rel",
                                  "running stats worst rel", "float64 eval worst rel", "gates"],
                   tablefmt="github", disable_numparse=True))
    print(f"\ngates: eval rel <= 5e-5 per layer, embedding cosine >= 0.999999, train-mode rel <= 1e-4, "
          f"running stats rel <= 1e-5; batch {args.batch}; faces: "
          f"{args.faces if faces is not None else 'not found'}")


if __name__ == "__main__":
    main()
