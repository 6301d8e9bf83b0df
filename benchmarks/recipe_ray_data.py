"""The recipe a user would write instead: Ray Data map_batches + diffusers' scheduler + write_parquet.

Same network, steps, guidance and batch size as novarch-batch; PNG encoding in the map; images
embedded in the Parquet rows. The actor asks for one CPU (asking for every CPU deadlocks the
pipeline's read and write tasks) and runs torch on all the threads novarch-batch gets.

    python -m benchmarks.recipe_ray_data --count 2000 --steps 5 --out /tmp/recipe
Prints one JSON line: wall seconds including Ray start, and seconds after Ray is up.
"""
from __future__ import annotations

import io
import json
import time

import click
import numpy as np


class DiffusersSampler:
    def __init__(self, model_dir: str, scheduler: str, steps: int, guidance: float, label: int, threads: int):
        import torch
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel

        torch.set_num_threads(threads)
        self.torch = torch
        self.unet = UNet2DModel.from_pretrained(model_dir).eval()
        if scheduler == "ddim":
            self.scheduler = DDIMScheduler.from_pretrained(model_dir, timestep_spacing="trailing")
        elif scheduler == "ddpm":
            self.scheduler = DDPMScheduler.from_pretrained(model_dir, timestep_spacing="trailing")
        else:
            algorithm = "sde-dpmsolver++" if scheduler == "dpmpp-2m-sde" else "dpmsolver++"
            self.scheduler = DPMSolverMultistepScheduler.from_pretrained(model_dir, algorithm_type=algorithm, solver_order=2, timestep_spacing="trailing")
        self.steps, self.guidance, self.label = steps, guidance, label

    def __call__(self, batch: dict) -> dict:
        torch = self.torch
        from PIL import Image

        ids = batch["id"]
        n = len(ids)
        gens = [torch.Generator().manual_seed(int(i)) for i in ids]
        x = torch.cat([torch.randn((1, 3, 32, 32), generator=g) for g in gens])
        labels = torch.full((n,), self.label)
        nulls = torch.full((n,), 2)
        self.scheduler.set_timesteps(self.steps)
        with torch.inference_mode():
            for t in self.scheduler.timesteps:
                if self.guidance == 1.0:
                    eps = self.unet(x, t, class_labels=labels).sample
                else:
                    cond, uncond = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, nulls])).sample.chunk(2)
                    eps = uncond + self.guidance * (cond - uncond)
                x = self.scheduler.step(eps, t, x, generator=gens).prev_sample
        pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        pngs = []
        for image in pixels:
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            pngs.append(buf.getvalue())
        return {"id": ids, "png": np.array(pngs, dtype=object)}


@click.command()
@click.option("--count", default=2000)
@click.option("--scheduler", type=click.Choice(["ddpm", "ddim", "dpmpp-2m", "dpmpp-2m-sde"]), default="ddpm")
@click.option("--steps", default=5)
@click.option("--guidance", default=1.0)
@click.option("--batch-size", default=64)
@click.option("--threads", default=2)
@click.option("--out", required=True, help="Folder or s3://bucket/prefix for write_parquet.")
def main(count, scheduler, steps, guidance, batch_size, threads, out):
    started = time.perf_counter()
    import ray

    from novarch_batch.workers.model import default_model_dir

    ray.init(include_dashboard=False, log_to_driver=False)
    ray_up = time.perf_counter()
    ray.data.DataContext.get_current().enable_progress_bars = False
    filesystem = None
    path = out
    if out.startswith("s3://"):
        from novarch_batch.storage.s3 import pyarrow_filesystem

        filesystem, path = pyarrow_filesystem(), out.removeprefix("s3://")
    ds = ray.data.range(count).map_batches(
        DiffusersSampler, fn_constructor_kwargs=dict(model_dir=str(default_model_dir()), scheduler=scheduler, steps=steps,
                                                     guidance=guidance, label=0, threads=threads),
        batch_size=batch_size, concurrency=1, num_cpus=1,
    )
    ds.write_parquet(path, filesystem=filesystem)
    done = time.perf_counter()
    print(json.dumps({"images": count, "seconds": done - started, "seconds_after_ray_up": done - ray_up,
                      "images_per_second": count / (done - started)}))


if __name__ == "__main__":
    main()
