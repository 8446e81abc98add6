"""How much GPU memory does one more image in an ``sd`` batch take? The figure behind
``fairloop.diffusion.sd.IMAGE_BYTES_512_HALF`` and ``VAE_BYTES_512_HALF``, measured.

Usage: python bench/bench_sd_memory.py MODEL [--batches 1,2,4,8] [--dtype float16]

MODEL is a Stable Diffusion folder in diffusers layout or a cached hub id. On a CUDA GPU, for each
batch size, one guided UNet step (the unguided and guided halves together, SDPA attention) is run
and the peak memory above the loaded weights is read; the slope over batch sizes is the cost of
one more image. Then one VAE decode (the generator decodes one image at a time). Prints the
figures beside fairloop's estimates. Needs a GPU: without one it says so and exits.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

GIB = 1024**3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this measures GPU memory: run it on a machine where torch sees a CUDA GPU")
    from diffusers import StableDiffusionPipeline
    from diffusers.models.attention_processor import AttnProcessor2_0

    from fairloop.diffusion.sd import image_bytes, vae_bytes

    dtype = getattr(torch, args.dtype)
    pipe = StableDiffusionPipeline.from_pretrained(args.model, dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False).to("cuda")
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    size = pipe.unet.config.sample_size
    tokens = pipe.tokenizer.model_max_length
    width = pipe.text_encoder.config.hidden_size
    batches = [int(b) for b in args.batches.split(",")]
    peaks = []
    for batch in batches:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        latents = torch.randn(2 * batch, pipe.unet.config.in_channels, size, size, device="cuda", dtype=dtype)
        context = torch.randn(2 * batch, tokens, width, device="cuda", dtype=dtype)
        with torch.inference_mode():
            pipe.unet(latents, 500, encoder_hidden_states=context)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
        print(f"batch {batch:>3}: UNet step peak {peaks[-1] / GIB:.3f} GiB above the weights")
    slope = float(np.polyfit(batches, peaks, 1)[0])
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.inference_mode():
        pipe.vae.decode(torch.randn(1, pipe.vae.config.latent_channels, size, size, device="cuda", dtype=dtype))
    torch.cuda.synchronize()
    vae = torch.cuda.max_memory_allocated() - base
    pixels = size * pipe.vae_scale_factor
    print(f"one more image: {slope / GIB:.3f} GiB (fairloop assumes {image_bytes(pixels, pixels, dtype) / GIB:.3f})")
    print(f"one VAE decode: {vae / GIB:.3f} GiB (fairloop keeps {vae_bytes(pixels, pixels, dtype) / GIB:.3f})")


if __name__ == "__main__":
    main()
