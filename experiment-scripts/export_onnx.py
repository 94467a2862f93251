#!/usr/bin/env python3
"""Exports a diffusers pipeline to the ONNX layout dfast runs (Optimum's layout, FIELD.md section 2).

  # a pipeline folder, or a Hub id when online
  python experiment-scripts/export_onnx.py --model runwayml/stable-diffusion-v1-5 --out exports/sd15
  # the real architecture from the public configs with random weights (no download): for benchmarks
  python experiment-scripts/export_onnx.py --random-weights --arch sd15 --out exports/sd15-random
  # PixArt-α (1024: --arch pixart-alpha; 512: pixart-alpha-512); the T5-XXL encoder is 19 GB of fp32 on disk
  python experiment-scripts/export_onnx.py --random-weights --arch pixart-alpha-512 --out exports/pixart-512

Options: --exporter torchscript|dynamo (default torchscript, opset 17, what Optimum exports; dynamo uses
opset 23 with native Attention / GroupNormalization nodes), --opset N, --components (default: every one;
exported in the order given, e.g. `unet,text_encoder,text_encoder_2,vae_decoder` for the UNet first).
SD and SDXL exports include vae_encoder/ (img2img and inpainting: `latent_parameters`, Optimum's output), and
a UNet of any input channels (9 for the inpainting checkpoints, e.g. stable-diffusion-inpainting). An LCM UNet
(`time_cond_proj_dim` in its config: SimianLuo/LCM_Dreamshaper_v7, latent-consistency/lcm-sdxl) takes the
guidance scale's embedding as the input `timestep_cond` [batch, time_cond_proj_dim], as Optimum names it.
Models over 2 GB keep their weights in one `model.onnx_data` next to `model.onnx`, as Optimum does.

Random weights: latency depends on shapes, not on weight values, so benchmarks of these exports time the
real architectures; their images are noise. Weights are drawn from a fixed seed, scaled so that the UNet's
activations stay finite in fp16.

Pinned versions: experiment-scripts/requirements-fixtures.txt (torch 2.11.0, diffusers 0.42.1, the versions
the GPU host runs). An SDXL export needs about 11 GB of memory in fp32.

PixArt-α: --model takes a diffusers PixArtAlphaPipeline folder (transformer/ then follows the interface in
make_tiny_pipelines.py, above PIXART_MAX_SEQUENCE). With --random-weights the T5-XXL encoder is never built in
torch (export_t5_replicated): its export's peak RSS was 1.8 GB whatever the depth (6 layers measured; the full
24 write 19 GB to disk). The 28-layer DiT's export peaked at 3.5 GB RSS (pixart-alpha-512), 4.8 GB with the VAE
decoder in the same run (pixart-alpha); TorchScript exporter, AMD EPYC Zen 4, torch 2.11 CPU.
--layers N caps both depths, for tests; --check-t5-replication checks the T5 construction against torch.
--t5-weights int8 writes T5's linears as 8-bit MatMulNBits (T5_INT8_BLOCK, T5_INT8_ACCURACY): 5.3 GB for
T5-XXL, exported in 1029 s at a peak RSS of 1.8 GB on the shared 2-core EPYC; --check-t5-replication also
measures its error against fp32 torch (relative L2 2.8e-2 on its 6-block T5).
"""

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

import common  # the model cards (a sibling module: this script's folder is on sys.path)
import make_tiny_pipelines as tiny  # CLIP vocabulary, wrappers, export helpers (a sibling: this script's folder)

# Public configs of the real checkpoints (diffusers' config.json of each component).
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "attention_head_dim": (5, 10, 20),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}
# SSD-1B (segmind/SSD-1B) keeps SDXL's blocks with fewer transformer layers, different on the way down and up,
# and a mid block of one ResNet (no attention). Its unet/config.json could not be read from here (no network but
# the package registries); the values are those that load its weights, taken from two public sources:
#  - ComfyUI's comfy/model_detection.py, table SSD_1B (matched against the checkpoint's keys):
#    transformer_depth [0, 0, 2, 2, 4, 4] (per down-block ResNet), transformer_depth_output
#    [0, 0, 0, 1, 1, 2, 10, 4, 4] (entry k is output_blocks[8 - k], detect_unet_config's mirror order; diffusers'
#    up_blocks[i].attentions[j] is output_blocks[3 i + j]), transformer_depth_middle -1 (a ResBlock alone);
#  - diffusers' mid_block_type "UNetMidBlock2D" (num_layers=0, no attention: one ResNet) and its
#    reverse_transformer_layers_per_block; a Segmind author names huggingface/diffusers PR 5400 as what diffusers
#    needed to load the asymmetric UNet (ComfyUI issue 1827), ComfyUI PR 1848 a single-ResNet mid block, and
#    diffusers PR 5779 added the UNetMidBlock2D option to ControlNet to train on SSD-1B.
# Down 2x2 + 2x4 = 12 transformer blocks, mid 0, up 4+4+10 + 2+1+1 = 22: 34 in all (SDXL: 70); 1.33 B UNet
# parameters (SDXL: 2.57 B), the published "1.3B". The third up block (UpBlock2D) has no attention: its entry
# is unused. Earlier exports approximated SSD-1B as SDXL with depths 1/2/4 both ways and SDXL's cross-attention
# mid block (1.32 B parameters, 4 transformer blocks in the mid block that SSD-1B does not have).
SSD1B_UNET = {
    **SDXL_UNET,
    "transformer_layers_per_block": (1, 2, 4),
    "reverse_transformer_layers_per_block": ((4, 4, 10), (2, 1, 1), (1, 1, 1)),
    "mid_block_type": "UNetMidBlock2D",
}

VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
}
CLIP_L = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}
CLIP_BIGG = {
    **CLIP_L,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

# Keyed by model card (models/<arch>.toml); the card's `pipeline` says which pipeline class is built.
ARCHS = {
    "sd15": {
        "unet": SD15_UNET,
        "vae": {**VAE, "sample_size": 512, "scaling_factor": 0.18215},
        "scheduler": common.SD15_SCHEDULER,
    },
    "sdxl": {
        "unet": SDXL_UNET,
        "vae": {**VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        "scheduler": common.SDXL_SCHEDULER,
    },
    "ssd-1b": {
        "unet": SSD1B_UNET,
        "vae": {**VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        "scheduler": common.SDXL_SCHEDULER,
    },
}
# The latent size (height, width) the VAE decoder is traced at here (the tiny fixtures use 8x12).
VAE_EXAMPLE_HW = (8, 8)


def is_sdxl(arch: str) -> bool:
    """The model card's pipeline class is StableDiffusionXLPipeline (else StableDiffusionPipeline)."""
    pipeline = common.card_defaults(arch)["pipeline"]
    if pipeline not in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
        raise ValueError(f"models/{arch}.toml: pipeline {pipeline} is not one random_pipeline builds")
    return pipeline == "StableDiffusionXLPipeline"


def halve_weights(module):
    """Default init makes deep random nets blow up; halving every weight matrix and kernel (biases and norms
    as they are) keeps the activations finite, in fp16 too."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1:
                p.mul_(0.5)


def random_unet(arch: str):
    """The UNet of random_pipeline(arch), alone: the same weights (it is the first module drawn after the seed,
    and halving draws nothing), without building the rest (pytorch_reference.py's UNet-alone timing)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**ARCHS[arch]["unet"])
    halve_weights(unet)
    return unet


def random_pipeline(arch: str, vocab_dir: Path):
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    spec = ARCHS[arch]
    unet = random_unet(arch)
    vae = AutoencoderKL(**spec["vae"])
    halve_weights(vae)
    te = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    if is_sdxl(arch):
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG))
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tiny.make_tokenizer(vocab_dir, "<|endoftext|>"),
            tokenizer_2=tiny.make_tokenizer(vocab_dir, "!"), unet=unet,
            scheduler=EulerDiscreteScheduler.from_config(spec["scheduler"]), force_zeros_for_empty_prompt=True)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tiny.make_tokenizer(vocab_dir, "<|endoftext|>"), unet=unet,
        scheduler=PNDMScheduler.from_config(spec["scheduler"]), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def consolidate_external_data(path: Path):
    """One `model.onnx_data` per model (Optimum's layout) when the export is over 2 GB or scattered."""
    import onnx

    folder = path.parent
    extra = [p for p in folder.iterdir() if p.name not in ("model.onnx", "config.json")]
    size = sum(p.stat().st_size for p in folder.iterdir())
    if not extra and size < 2**31:
        return
    if [p.name for p in extra] == ["model.onnx_data"]:  # already one file (export_t5_replicated writes that)
        return
    model = onnx.load(str(path), load_external_data=True)
    for p in extra:
        p.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx_data", size_threshold=1024)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="pipeline folder or Hub id (needs network for a Hub id)")
    ap.add_argument("--random-weights", action="store_true", help="build --arch from public configs, random weights")
    ap.add_argument("--arch", choices=sorted(ARCHS) + sorted(PIXART_ARCHS), help="architecture for --random-weights")
    ap.add_argument("--layers", type=int, default=0,
                    help="PixArt only: cap the T5 and DiT depth (tests of the export at a reduced size)")
    ap.add_argument("--check-t5-replication", action="store_true",
                    help="check the T5 layer replication of --arch pixart-* against torch at a small size, and exit")
    ap.add_argument("--t5-weights", choices=["fp32", "int8"], default="fp32",
                    help="PixArt --random-weights only: the T5 encoder's linear weights in fp32 (19 GB for T5-XXL) or "
                         "8-bit weight-only (com.microsoft MatMulNBits, about 5.3 GB)")
    ap.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    ap.add_argument("--opset", type=int, help="default 17 (torchscript) or 23 (dynamo)")
    ap.add_argument("--components", default="text_encoder,text_encoder_2,unet,transformer,vae_decoder,vae_encoder",
                    help="comma list of components to export, in this order (others are skipped); each prints "
                         "'<component>: exported in N s' once its files are complete")
    ap.add_argument("--out", type=Path, help="the output folder (required but with --check-t5-replication)")
    args = ap.parse_args()
    if args.check_t5_replication:
        check_t5_replication()
        return
    if args.out is None:
        ap.error("--out is required")
    if args.random_weights == bool(args.model):
        ap.error("give exactly one of --model or --random-weights")
    if args.random_weights and not args.arch:
        ap.error("--random-weights needs --arch")
    if args.t5_weights != "fp32" and not (args.random_weights and args.arch in PIXART_ARCHS):
        ap.error("--t5-weights applies to --random-weights --arch pixart-alpha|pixart-alpha-512 only")
    if args.out.exists() and any(args.out.iterdir()):
        ap.error(f"{args.out} exists and is not empty")

    wanted = [c for c in args.components.split(",") if c]  # in the order given: the exports run in it
    style = tiny.DYNAMO if args.exporter == "dynamo" else tiny.TORCHSCRIPT
    if args.opset:
        style = dataclasses.replace(style, opset=args.opset)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.time()

    def done() -> str:
        return f"done in {time.time() - t0:.0f} s ({args.exporter}, opset {style.opset})"

    if args.random_weights and args.arch in PIXART_ARCHS:
        if style.dynamo and "text_encoder" in wanted:
            ap.error("--arch pixart-*: the T5 encoder is built from a TorchScript export (its node names locate the "
                     "blocks); use --exporter torchscript, or leave text_encoder out of --components")
        args.out.mkdir(parents=True, exist_ok=True)
        export_pixart_random(args.arch, args.out, wanted, style, args.layers, args.t5_weights)
        print(f"{args.out}: {done()}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        vocab_dir = Path(tmp)
        tiny.write_clip_vocab(vocab_dir)
        if args.random_weights:
            pipe = random_pipeline(args.arch, vocab_dir)
            sdxl = is_sdxl(args.arch)
        else:
            from diffusers import DiffusionPipeline

            pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
            sdxl = hasattr(pipe, "text_encoder_2")
        pipe = pipe.to(torch.float32)
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        if type(pipe).__name__ == "PixArtAlphaPipeline":
            export_pixart(pipe, out, wanted, style)
            print(f"{out}: {done()}")
            return
        # Layout files: model_index.json, scheduler config, tokenizers (vocab.json + merges.txt).
        write_model_index(pipe, out)
        (out / "scheduler").mkdir(exist_ok=True)
        pipe.scheduler.save_config(out / "scheduler")
        for tok in ["tokenizer", "tokenizer_2"] if sdxl else ["tokenizer"]:
            getattr(pipe, tok).save_pretrained(out / tok)
            for f in ["vocab.json", "merges.txt"]:
                if not (out / tok / f).exists():
                    shutil.copy(vocab_dir / f, out / tok / f)
        exports = {
            "text_encoder": lambda: tiny.export_text_encoder(
                pipe.text_encoder, out / "text_encoder", False, sdxl, torch.int64, style=style),
        }
        if sdxl:
            exports["text_encoder_2"] = lambda: tiny.export_text_encoder(
                pipe.text_encoder_2, out / "text_encoder_2", True, True, torch.int64, style=style)
        exports["unet"] = lambda: tiny.export_unet(pipe.unet, out / "unet", sdxl, torch.int64, "batch", style=style)
        exports["vae_decoder"] = lambda: tiny.export_vae_decoder(pipe.vae, out, VAE_EXAMPLE_HW, style=style)
        # img2img and inpainting (dfast generate --image); traced on an image of the decoder's example size.
        vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        encoder_hw = tuple(vae_scale * d for d in VAE_EXAMPLE_HW)
        exports["vae_encoder"] = lambda: tiny.export_vae_encoder(pipe.vae, out, encoder_hw, style=style)
        run_exports(out, exports, wanted)
    print(f"{out}: {done()}")


def write_model_index(pipe, out: Path):
    """out/model_index.json as diffusers' save_config writes it."""
    with tempfile.TemporaryDirectory() as saved:
        pipe.save_config(saved)
        shutil.copy(Path(saved) / "model_index.json", out / "model_index.json")


def run_exports(out: Path, exports: dict, order: list):
    """Runs the exports (component name -> a function that writes out/<name>/model.onnx) that `order` names, in
    its order (a GPU check exports the UNet first and converts it while the rest is exported), each followed by
    consolidate_external_data."""
    for name in order:
        if name not in exports:
            continue
        t = time.time()
        exports[name]()
        consolidate_external_data(out / name / "model.onnx")
        print(f"{name}: exported in {time.time() - t:.0f} s", flush=True)


def export_pixart(pipe, out: Path, wanted: list, style: tiny.ExportStyle):
    """A PixArtAlphaPipeline in the layout of models/tiny-pixart: model_index.json, scheduler/, tokenizer/
    (tokenizer.json, which transformers' fast T5 tokenizer writes), text_encoder/ (T5 encoder), transformer/
    (the interface described in make_tiny_pipelines.py above PIXART_MAX_SEQUENCE), vae_decoder/."""
    write_model_index(pipe, out)
    (out / "scheduler").mkdir(exist_ok=True)
    pipe.scheduler.save_config(out / "scheduler")
    pipe.tokenizer.save_pretrained(out / "tokenizer")
    if not (out / "tokenizer" / "tokenizer.json").exists():
        raise SystemExit(f"{out / 'tokenizer'}: the pipeline's tokenizer ({type(pipe.tokenizer).__name__}) wrote no "
                         "tokenizer.json; dfast needs the fast T5 tokenizer's file")
    exports = {
        "text_encoder": lambda: tiny.export_t5(pipe.text_encoder, out / "text_encoder", style=style),
        "transformer": lambda: tiny.export_pixart_transformer(pipe.transformer, out / "transformer", style=style),
        "vae_decoder": lambda: tiny.export_vae_decoder(pipe.vae, out, VAE_EXAMPLE_HW, style=style),
    }
    run_exports(out, exports, wanted)


# ---------------------------------------------------------------------------------------------------------
# PixArt-α with random weights at the real sizes. The T5-XXL encoder (4.76B parameters, 19 GB in fp32) is never
# built in torch: a 3-block T5 with the real head layout (64 heads of 64) but tiny d_model / d_ff / vocabulary
# is exported, its last block's subgraph is copied until the real depth, and every weight is drawn at its real
# shape and written straight to model.onnx_data, one tensor at a time.

T5_XXL = {  # google/t5-v1_1-xxl's encoder (DeepFloyd/t5-v1_1-xxl, as PixArt-α ships it)
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0, "tie_word_embeddings": False, "is_encoder_decoder": True,
    "use_cache": False, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
}
PIXART_TRANSFORMER = {  # PixArt-alpha/PixArt-XL-2-1024-MS transformer/config.json (sample_size per arch)
    "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8, "num_layers": 28,
    "cross_attention_dim": 1152, "patch_size": 2, "caption_channels": 4096, "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000, "norm_type": "ada_norm_single", "norm_elementwise_affine": False, "norm_eps": 1e-6,
    "attention_bias": True, "norm_num_groups": 32,
}
PIXART_ARCHS = {
    "pixart-alpha": {"sample_size": 128},  # PixArt-XL-2-1024-MS: the resolution / aspect_ratio conditions
    "pixart-alpha-512": {"sample_size": 64},  # PixArt-XL-2-512x512: none
}


def random_t5_tensor(name: str, shape, seed: int):
    """A parameter at its torch shape: linear weights N(0, 1/fan_in), the query's N(0, 1/(fan_in * 64)) as
    T5's own init (T5 does not scale its attention scores by 1/sqrt(d_kv), d_kv 64 here), norms 1, embeddings
    N(0, 1); float32. Without the query's factor the random scores are so large that softmax is nearly an
    argmax and any perturbation (int8 weights, say) flips it."""
    import zlib

    import numpy as np

    if name.endswith("layer_norm.weight"):
        return np.ones(shape, dtype=np.float32)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    std = 1.0 if name == "shared.weight" else (0.1 if "relative_attention_bias" in name else shape[-1] ** -0.5)
    if name.endswith("SelfAttention.q.weight"):
        std /= 8.0  # sqrt(d_kv)
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std))


T5_INT8_BLOCK = 128  # MatMulNBits block along K: one fp32 scale per 128 weights of a column
T5_INT8_ACCURACY = 4  # MatMulNBits accuracy_level 4: int8 activations too (ORT's fast int8 kernel)


def int8_blocks(weight, block: int):
    """torch-layout linear weight [N, K] -> (MatMulNBits B [N, K/block, block] uint8, scales [N * K/block] fp32):
    symmetric 8-bit per block of `block` input weights, stored with MatMulNBits' default zero point 128."""
    import numpy as np

    n, k = weight.shape
    w = weight.reshape(n, k // block, block)
    scale = np.abs(w).max(axis=-1) / np.float32(127)
    scale[scale == 0] = 1
    q = np.clip(np.rint(w / scale[..., None]), -127, 127).astype(np.int16) + 128
    return q.astype(np.uint8), scale.reshape(-1).astype(np.float32)


def export_t5_replicated(config: dict, folder: Path, seed: int = 0, weights: str = "fp32",
                         style: tiny.ExportStyle = tiny.TORCHSCRIPT):
    """Writes folder/model.onnx + model.onnx_data: T5EncoderModel(T5Config(**config)) with weights from
    random_t5_tensor, and config.json. Peak memory: the largest single tensor (the 32128 x 4096 embedding, 0.5 GB)
    plus a 3-block export at d_model 8.

    weights "int8": every linear layer of the blocks (q, k, v, o, wi_0, wi_1, wo) becomes ONNX Runtime's
    com.microsoft MatMulNBits with bits 8 (int8_blocks: one scale per T5_INT8_BLOCK weights, accuracy_level
    T5_INT8_ACCURACY), quantized as each tensor is drawn; the embedding and the norms stay fp32. T5-XXL is then
    about 5.3 GB on disk instead of 19 GB.

    style: how the 3-block stand-in is exported; a TorchScript style (its node names locate the blocks), at
    opset 17 or the one --opset gives."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from transformers import T5Config, T5EncoderModel

    target = T5Config(**config)
    layers = target.num_layers
    if layers < 3:
        raise ValueError(f"export_t5_replicated needs at least 3 layers, got {layers}")
    # The stand-in: the target's heads, head width and relative buckets (the graph's shape constants hold them),
    # tiny everything else. Distinct random values, so that no two weights are folded into one initializer.
    small = T5Config(**dict(config, d_model=8, d_ff=8, vocab_size=64, num_layers=3))
    torch.manual_seed(seed)
    model = T5EncoderModel(small).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5 if p.dim() > 1 else 1 + 0.1 * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tiny.export_t5(model, Path(tmp), style=style)
        graph_model = onnx.load(str(Path(tmp) / "model.onnx"))
    graph = graph_model.graph

    # Which initializer is which parameter (TorchScript stores a linear weight transposed, as onnx::MatMul_N).
    params = {n: p.detach().numpy() for n, p in model.named_parameters()}
    role = {}  # initializer name -> (parameter name, transposed)
    for init in graph.initializer:
        value = numpy_helper.to_array(init)
        for name, p in params.items():
            if value.shape == p.shape and np.array_equal(value, p):
                role[init.name] = (name, False)
            elif p.ndim == 2 and value.shape == p.T.shape and np.array_equal(value, p.T):
                role[init.name] = (name, True)
    found = {r[0] for r in role.values()}
    if found != set(params):
        raise RuntimeError(f"T5 export: parameters without an initializer: {sorted(set(params) - found)}")

    # Block 2's nodes; the one tensor that enters from block 1 (the hidden state) and the one that leaves.
    prefix = "/model/encoder/block.2/"
    block = [n for n in graph.node if n.name.startswith(prefix)]
    made = {o for n in block for o in n.output}
    made_by_block1 = {o for n in graph.node if n.name.startswith("/model/encoder/block.1/") for o in n.output}
    entering = {i for n in block for i in n.input if i in made_by_block1}
    rest = [n for n in graph.node if not n.name.startswith(prefix)]
    leaving = {i for n in rest for i in n.input if i in made}
    if len(entering) != 1 or len(leaving) != 1:
        raise RuntimeError(f"T5 export: block 2 is not a chain link (in {entering}, out {leaving})")
    (h_in,), (h_out,) = entering, leaving

    def renamed(tensor: str, k: int) -> str:
        return tensor.replace("/block.2/", f"/block.{k}/")

    copies = []
    for k in range(3, layers):
        for n in block:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            c.name = renamed(n.name, k)
            for j, i in enumerate(c.input):
                if i == h_in:
                    c.input[j] = renamed(h_out, k - 1) if k > 3 else h_out
                elif i in made:
                    c.input[j] = renamed(i, k)
                elif i in role and ".block.2." in role[i][0]:
                    c.input[j] = f"{role[i][0].replace('.block.2.', f'.block.{k}.')}{'.T' if role[i][1] else ''}"
            for j, o in enumerate(c.output):
                c.output[j] = renamed(o, k)
            copies.append(c)
    last = renamed(h_out, layers - 1) if layers > 3 else h_out
    for n in rest:
        for j, i in enumerate(n.input):
            if i == h_out:
                n.input[j] = last
    position = max(graph.node[:].index(n) for n in block) + 1  # replicas right after block 2
    nodes = list(graph.node[:position]) + copies + list(graph.node[position:])
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # shapes of the stand-in
    graph.output[0].type.tensor_type.shape.dim[2].dim_value = target.d_model

    # Initializers: the block-2 ones renamed (.T marks a transposed weight), block k's added; weights at the
    # target's shapes, written one at a time.
    shapes = {}
    with torch.device("meta"):
        for name, p in T5EncoderModel(target).named_parameters():
            shapes[name] = tuple(p.shape)
    wanted = []  # (initializer name, parameter name, transposed)
    for init in graph.initializer:
        if init.name in role:
            pname, t = role[init.name]
            wanted.append((init.name, pname, t))
    for k in range(3, layers):
        for init_name, pname, t in list(wanted):
            if ".block.2." in pname:
                new_p = pname.replace(".block.2.", f".block.{k}.")
                wanted.append((f"{new_p}{'.T' if t else ''}", new_p, t))
    constants = [i for i in graph.initializer if i.name not in role]
    del graph.initializer[:]
    graph.initializer.extend(constants)
    if weights not in ("fp32", "int8"):
        raise ValueError(f"T5 weights must be fp32 or int8, got {weights!r}")
    # int8: the transposed linear weights that are a MatMul's right-hand side become MatMulNBits.
    matmul_of = {n.input[1]: n for n in graph.node if n.op_type == "MatMul" and len(n.input) == 2}
    quantized = {}  # initializer name -> MatMul node
    if weights == "int8":
        for init_name, pname, t in wanted:
            if t and ".block." in pname and init_name in matmul_of:
                quantized[init_name] = matmul_of[init_name]
        if not quantized:
            raise RuntimeError("T5 export: no linear weight found to quantize")
        graph_model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    data = folder / "model.onnx_data"
    with open(data, "wb") as f:

        def write(name: str, value, data_type):
            offset = f.tell()
            f.write(value.tobytes())
            tensor = onnx.TensorProto(name=name, data_type=data_type, dims=value.shape)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, v in (("location", data.name), ("offset", str(offset)), ("length", str(value.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, v
            graph.initializer.append(tensor)

        for init_name, pname, t in wanted:
            value = random_t5_tensor(pname, shapes[pname], seed)
            if init_name in quantized:
                n_out, k_in = value.shape  # torch layout [out, in]: MatMulNBits' B layout
                block = min(T5_INT8_BLOCK, k_in & -k_in)  # a power of two dividing K
                if block < 16:
                    raise ValueError(f"T5 int8: {pname} has K={k_in}, not a multiple of 16")
                q, scale = int8_blocks(value, block)
                write(f"{init_name}.int8", q, onnx.TensorProto.UINT8)
                write(f"{init_name}.scale", scale, onnx.TensorProto.FLOAT)
                node = quantized[init_name]
                node.op_type, node.domain = "MatMulNBits", "com.microsoft"
                node.input[1] = f"{init_name}.int8"
                node.input.append(f"{init_name}.scale")
                node.attribute.extend([
                    onnx.helper.make_attribute("K", k_in), onnx.helper.make_attribute("N", n_out),
                    onnx.helper.make_attribute("bits", 8), onnx.helper.make_attribute("block_size", block),
                    onnx.helper.make_attribute("accuracy_level", T5_INT8_ACCURACY)])
                del q, scale
            else:
                value = np.ascontiguousarray(value.T) if t else value
                write(init_name, value, onnx.TensorProto.FLOAT)
            del value
    onnx.save_model(graph_model, str(folder / "model.onnx"))
    target.to_json_file(folder / "config.json")
    return sum(int(np.prod(s)) for s in shapes.values())


def export_pixart_random(arch: str, out: Path, wanted: list, style: tiny.ExportStyle, layers: int = 0,
                         t5_weights: str = "fp32"):
    """PixArt-α at its real sizes with random weights (tokenizer: the tiny trained SentencePiece model, whose
    ids are valid in T5's vocabulary). layers > 0 caps the depth of both the T5 and the DiT: for testing the
    export at a reduced size only."""
    from diffusers import AutoencoderKL, PixArtTransformer2DModel

    t5 = {**T5_XXL, "num_layers": min(T5_XXL["num_layers"], layers or 10**6)}
    dit = {**PIXART_TRANSFORMER, "num_layers": min(PIXART_TRANSFORMER["num_layers"], layers or 10**6)}
    dit.update(PIXART_ARCHS[arch])
    index = {
        "_class_name": "PixArtAlphaPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", "PixArtTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    common.write_scheduler_config(out, common.PIXART_SCHEDULER)
    tiny.make_t5_tokenizer(out / "tokenizer")

    def transformer():
        torch.manual_seed(0)
        model = PixArtTransformer2DModel(**dit).eval()
        halve_weights(model)  # as random_pipeline
        tiny.export_pixart_transformer(model, out / "transformer", style=style)

    def vae_decoder():
        torch.manual_seed(0)
        vae = AutoencoderKL(**VAE, sample_size=8 * dit["sample_size"], scaling_factor=0.18215).eval()
        halve_weights(vae)
        tiny.export_vae_decoder(vae, out, VAE_EXAMPLE_HW, style=style)

    exports = {
        "text_encoder": lambda: export_t5_replicated(t5, out / "text_encoder", weights=t5_weights, style=style),
        "transformer": transformer,
        "vae_decoder": vae_decoder,
    }
    run_exports(out, exports, wanted)


T5_INT8_TOLERANCE = 0.05  # relative L2 of last_hidden_state, int8 weight-only T5 against fp32 torch


def check_t5_replication():
    """The replicated export against torch's T5EncoderModel with the same weights, at a small target (K of 256
    and 384, so the int8 export uses T5_INT8_BLOCK as T5-XXL does): fp32 must match torch, and the int8
    weight-only export's error against fp32 torch is measured and bounded by T5_INT8_TOLERANCE."""
    import onnxruntime as ort
    from transformers import T5Config, T5EncoderModel

    config = {**T5_XXL, "d_model": 256, "d_ff": 384, "vocab_size": 200, "num_heads": 4, "d_kv": 64, "num_layers": 6}
    model = T5EncoderModel(T5Config(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(random_t5_tensor(name, tuple(p.shape), 7)))
    ids = torch.randint(3, 200, (2, 120), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros_like(ids)
    mask[0, :17], mask[1, :64] = 1, 1
    ids = ids * mask
    with torch.no_grad():
        want = model(ids, attention_mask=mask).last_hidden_state.numpy()
    errors = {}
    for weights in ("fp32", "int8"):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            export_t5_replicated(config, folder, seed=7, weights=weights)
            sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
            got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
            del sess
        # Padded positions included: the pipeline passes all 120 on (the DiT masks them in cross-attention).
        errors[weights] = tiny.relative_l2(got, want)
        print(f"T5 replication ({weights}, {config['num_layers']} layers, d_model {config['d_model']}): "
              f"relative L2 of last_hidden_state vs torch fp32 {errors[weights]:.2e}")
    assert errors["fp32"] < 1e-4, f"the replicated T5 export differs from torch (relative L2 {errors['fp32']:.2e})"
    assert errors["int8"] < T5_INT8_TOLERANCE, (
        f"the int8 weight-only T5 differs from fp32 torch by {errors['int8']:.2e} (tolerance {T5_INT8_TOLERANCE})")


if __name__ == "__main__":
    main()
