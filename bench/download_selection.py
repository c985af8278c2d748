"""What the default download selects: every file and the tensor bytes of the weight files.

Usage: python bench/download_selection.py

The weight sizes come from the real architectures built on the meta device (no memory, no Hub):
SD-1.5 inpainting UNet in fp16, sd-vae-ft-mse in fp32, CatVTON's 16 self-attention layers in fp32.
The files on the Hub add a safetensors header of a few tens of KB each; JSON configs are a few KB.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402

from app.config import Settings  # noqa: E402
from app.model.pipeline import adapter_state_keys  # noqa: E402
from app.model.weights import required_files  # noqa: E402


def main() -> None:
    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=9, cross_attention_dim=768, sample_size=64)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=256)
    params = dict(unet.named_parameters())
    sizes = {
        "unet/diffusion_pytorch_model.fp16.safetensors": sum(p.numel() for p in unet.parameters()) * 2,
        "diffusion_pytorch_model.safetensors": sum(p.numel() for p in vae.parameters()) * 4,
        "attention/model.safetensors": sum(params[name].numel() for name in adapter_state_keys(unet).values()) * 4,
    }
    total = 0
    for item in required_files(Settings.from_env({}, volume="volume")):
        size = next((v for k, v in sizes.items() if item.path.endswith(k)), None)
        total += size or 0
        shown = f"{size:>15,}" if size else f"{'(config, KB)':>15}"
        print(f"{shown}  {item.repo}/{item.path}")
    print(f"{total:>15,}  bytes of tensors in total ({total / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
