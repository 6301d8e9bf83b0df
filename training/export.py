"""Write a model folder in diffusers format plus the project's own novarch.json."""
from __future__ import annotations

import json
from pathlib import Path

from diffusers import DDPMScheduler, UNet2DModel

CLASSES = ("building", "house")
NULL_LABEL = 2  # the class-free label used for unconditional sampling and guidance


DEFAULT_CHANNELS = (32, 64, 64)


def build_unet(channels: tuple[int, ...] = DEFAULT_CHANNELS) -> UNet2DModel:
    """The NovArch-tiny UNet: three resolutions without attention (~1.06M parameters at the default widths)."""
    return UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3,
        block_out_channels=tuple(channels), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        num_class_embeds=len(CLASSES) + 1,  # + the null label
        norm_num_groups=8,
    )


def build_scheduler(prediction_type: str = "v_prediction", zero_terminal_snr: bool = True) -> DDPMScheduler:
    """Training noise schedule; cosine betas keep the small 32x32 images from saturating early.

    The config is what samplers read: prediction type, zero-terminal-SNR rescaling and trailing
    timesteps (which start sampling at t = T, the pure noise that training saw).
    """
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
                         rescale_betas_zero_snr=zero_terminal_snr, timestep_spacing="trailing")


def base_meta() -> dict:
    """The facts a sampler needs besides the diffusers configs."""
    return {
        "name": "novarch-tiny",
        "classes": list(CLASSES),
        "null_label": NULL_LABEL,
        "image_size": 32,
        "channels": 3,
        "pixel_range": [-1, 1],
    }


def save_model_folder(unet: UNet2DModel, scheduler, folder, meta: dict | None = None) -> Path:
    """Save weights (safetensors only), scheduler_config.json and novarch.json into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder, safe_serialization=True)
    scheduler.save_pretrained(folder)
    full = {**base_meta(), "prediction_type": scheduler.config.prediction_type, **(meta or {})}
    (folder / "novarch.json").write_text(json.dumps(full, indent=2) + "\n")
    for f in folder.iterdir():  # safetensors writes 0600; shipped package data must be world-readable
        if f.is_file():
            f.chmod(0o644)
    return folder
