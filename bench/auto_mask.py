"""CPU time of one auto mask with the real-size parser architecture (SegFormer-B2, random weights).

Usage: python bench/auto_mask.py [--runs 5] [--image assets/examples/person-1.png]

Builds a SegFormer-B2 clothes parser from its config (18 ATR labels, 512x512 input) with random
weights in a temp folder, loads it through app.images.masking.HumanParser as production does, and times
parse + rules for the example image. Weight values do not change the timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from app.images.masking import ATR_LABELS, HumanParser  # noqa: E402

B2 = {"depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 320, 512], "num_attention_heads": [1, 2, 5, 8],
      "decoder_hidden_size": 768}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", type=Path, default=ROOT / "assets" / "examples" / "person-1.png")
    args = parser.parse_args()
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = SegformerConfig(**B2, id2label=dict(enumerate(ATR_LABELS)),
                                 label2id={n: i for i, n in enumerate(ATR_LABELS)})
        SegformerForSemanticSegmentation(config).save_pretrained(folder, safe_serialization=True)
        (folder / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 512, "width": 512}}))
        human = HumanParser(folder)
        image = Image.open(args.image).convert("RGB")
        human.auto_mask(image, "upper")  # warm-up
        walls, cpus = [], []
        for _ in range(args.runs):
            wall, cpu = time.perf_counter(), time.process_time()
            human.auto_mask(image, "upper")
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        params = sum(p.numel() for p in human.model.parameters())
        print(f"SegFormer-B2 ({params / 1e6:.1f} M parameters), image {image.width}x{image.height}, "
              f"torch threads {torch.get_num_threads()}: load {human.load_seconds:.2f} s; auto mask median of "
              f"{args.runs}: wall {statistics.median(walls):.2f} s, CPU {statistics.median(cpus):.2f} s")


if __name__ == "__main__":
    main()
