#!/usr/bin/env python3
"""Builds the LoRA fixtures of `dfast convert --lora` and diffusers' references for them.

Writes, relative to the repository root:
  models/loras/tiny-sd-peft.safetensors   a LoRA for tiny-sd in diffusers' PEFT format, as diffusers' training
                                          scripts save it (`unet.<module>.lora_A.weight` / `lora_B.weight`,
                                          `text_encoder.<module>...`, rank and lora_alpha in the
                                          `lora_adapter_metadata` of the safetensors header): UNet attention,
                                          feed-forward and proj_in/proj_out (1x1 convolutions), text encoder
                                          attention; rank 4, alpha 8;
  models/loras/tiny-sd-kohya.safetensors  a LoRA for tiny-sd in kohya's format (`lora_unet_<module_with_underscores>`
                                          and `lora_te_text_model_...`, `.lora_down.weight` / `.lora_up.weight`,
                                          `.alpha`): UNet attention and the resnets' 3x3 convolutions and time
                                          projections, text encoder MLP; rank 4, alpha 2 (a scale of 0.5);
  tests/references/tiny-sd/<LORA_CASES>/  diffusers' text-to-image outputs with the LoRA loaded by
                                          `load_lora_weights` and merged by `fuse_lora(lora_scale=...)`: final
                                          latents, decoded image, params.json (with the LoRA file and scale) and
                                          the scheduler's config. lora-peft-lcm is the LCM-LoRA configuration: the
                                          LCM scheduler, 4 steps, guidance 1.5.

tiny-sd's weights are rebuilt from their seed and checked against the committed ONNX components
(make_tiny_pipelines.rebuilt_committed), so the references apply to models/tiny-sd and models/tiny-sd-dynamo.
Each case also runs the pipeline without the LoRA and prints how far that is from the reference: the tests need
it far (>= 10x their 1e-3 tolerance) so that they can fail.

Run with the pinned versions of requirements-fixtures.txt (peft among them):
  python experiment-scripts/make_lora_references.py
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import CLIPTokenizer

import common  # a sibling module (this script's folder is on sys.path)
import make_tiny_pipelines as tiny

ROOT = common.ROOT
RANK = 4

# (reference folder under tests/references/tiny-sd, LoRA file under models/loras, scale given to fuse_lora and to
# `dfast convert --lora-scale`, dfast scheduler key, steps, guidance).
LORA_CASES = [
    ("lora-peft-lcm", "tiny-sd-peft.safetensors", 0.8, "lcm", 4, 1.5),
    ("lora-kohya-euler", "tiny-sd-kohya.safetensors", 1.0, "euler", 6, 7.5),
]


def tiny_sd(models: Path):
    """tiny-sd rebuilt and checked, with the committed folder's tokenizer and scheduler (as the other references)."""
    sd, _ = tiny.rebuilt_committed(models)
    sd.tokenizer = CLIPTokenizer.from_pretrained(models / "tiny-sd" / "tokenizer")
    sd.scheduler = PNDMScheduler.from_pretrained(models / "tiny-sd" / "scheduler")
    return sd


def randomize(named_params, seed: int, std: float):
    """LoRA factors drawn from one seeded generator (peft starts lora_B at zero, which would change nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(named_params, key=lambda kv: kv[0]):
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def save_peft_lora(models: Path, dest: Path):
    """The PEFT-format LoRA, made as diffusers' train_text_to_image_lora script makes one (add_adapter, then
    get_peft_model_state_dict and save_lora_weights with each model's LoraConfig as metadata)."""
    sd = tiny_sd(models)
    unet_config = LoraConfig(r=RANK, lora_alpha=2 * RANK, init_lora_weights="gaussian",
                             target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out",
                                             "ff.net.0.proj", "ff.net.2"])
    te_config = LoraConfig(r=RANK, lora_alpha=2 * RANK, init_lora_weights="gaussian",
                           target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    sd.unet.add_adapter(unet_config)
    sd.text_encoder.add_adapter(te_config)
    randomize(sd.unet.named_parameters(), 1, 0.15)
    randomize(sd.text_encoder.named_parameters(), 2, 0.15)
    with_dir = dest.parent / "peft-tmp"
    StableDiffusionPipeline.save_lora_weights(
        with_dir,
        unet_lora_layers=get_peft_model_state_dict(sd.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(sd.text_encoder),
        unet_lora_adapter_metadata=sd.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=sd.text_encoder.peft_config["default"].to_dict(),
        safe_serialization=True,
    )
    shutil.move(with_dir / "pytorch_lora_weights.safetensors", dest)
    shutil.rmtree(with_dir)


def save_kohya_lora(models: Path, dest: Path):
    """The kohya-format LoRA, written key by key as kohya's sd-scripts name them: `lora_unet_` plus the diffusers
    module path with dots as underscores, `lora_te_text_model_` for the text encoder (whose transformers 4 module
    path started `text_model.`); lora_down is [rank, in(, kh, kw)], lora_up [out, rank(, 1, 1)]."""
    sd = tiny_sd(models)
    gen = torch.Generator().manual_seed(3)
    alpha = RANK / 2
    tensors = {}

    def add(prefix: str, module):
        if isinstance(module, torch.nn.Conv2d):
            down = (RANK, module.in_channels, *module.kernel_size)
            up = (module.out_channels, RANK, 1, 1)
        else:
            down = (RANK, module.in_features)
            up = (module.out_features, RANK)
        tensors[f"{prefix}.lora_down.weight"] = torch.randn(down, generator=gen) * 0.2
        tensors[f"{prefix}.lora_up.weight"] = torch.randn(up, generator=gen) * 0.2
        tensors[f"{prefix}.alpha"] = torch.tensor(alpha)

    for name, module in sd.unet.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        attention = leaf in ("to_q", "to_k", "to_v") or name.endswith(".to_out.0")
        resnet = ".resnets." in name and leaf in ("conv1", "conv2", "time_emb_proj")
        if (attention or resnet) and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            add("lora_unet_" + name.replace(".", "_"), module)
    for name, module in sd.text_encoder.named_modules():
        if name.rsplit(".", 1)[-1] in ("fc1", "fc2"):
            add("lora_te_text_model_" + name.replace(".", "_"), module)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, dest)


def run_case(sd, name: str, key: str, steps: int, guidance: float):
    """diffusers' pipeline with `key`'s scheduler; the final latents and the decoded image."""
    base = sd.scheduler
    sd.scheduler = common.scheduler_class(key).from_config(base.config)
    try:
        with torch.no_grad():
            latents = sd(prompt=tiny.PROMPT, negative_prompt=tiny.NEGATIVE_PROMPT, num_inference_steps=steps,
                         guidance_scale=guidance, height=64, width=64, output_type="latent",
                         generator=torch.Generator("cpu").manual_seed(0)).images
            decoded = sd.vae.decode(latents / sd.vae.config.scaling_factor, return_dict=False)[0]
        return latents, decoded, sd.scheduler
    finally:
        sd.scheduler = base


def save_references(models: Path, refs: Path):
    for name, file, scale, key, steps, guidance in LORA_CASES:
        sd = tiny_sd(models)
        plain, _, _ = run_case(sd, name, key, steps, guidance)
        sd.load_lora_weights(models / "loras" / file, adapter_name="fixture")
        sd.fuse_lora(lora_scale=scale, components=["unet", "text_encoder"])
        sd.unload_lora_weights()
        latents, decoded, scheduler = run_case(sd, name, key, steps, guidance)
        out = refs / "tiny-sd" / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        scheduler.save_config(out)
        np.save(out / "latents.npy", latents.numpy().astype(np.float32))
        sd.image_processor.postprocess(decoded, output_type="pil")[0].save(out / "image.png")
        params = {"prompt": tiny.PROMPT, "negative_prompt": tiny.NEGATIVE_PROMPT, "steps": steps,
                  "guidance": guidance, "height": 64, "width": 64, "seed": 0, "scheduler": key,
                  "scheduler_class": type(scheduler).__name__, "scheduler_overrides": {},
                  "lora": f"models/loras/{file}", "lora_scale": scale}
        (out / "params.json").write_text(json.dumps(params, indent=1))
        unmerged = tiny.relative_l2(plain.numpy(), latents.numpy())
        print(f"  tiny-sd/{name}: {file} at {scale}, {type(scheduler).__name__} {steps} steps, guidance {guidance}; "
              f"without the LoRA the latents are {unmerged:.3e} away")
        assert unmerged >= 0.05, f"{name}: the LoRA changes too little ({unmerged:.2e}) for a test to see it"


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    models, refs = ROOT / "models", ROOT / "tests" / "references"
    loras = models / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    save_peft_lora(models, loras / "tiny-sd-peft.safetensors")
    save_kohya_lora(models, loras / "tiny-sd-kohya.safetensors")
    save_references(models, refs)
    print("done")


if __name__ == "__main__":
    main()
