"""Bare sampler: network + sampler alone in one process (no Ray, no encoding, no storage).

    python -m benchmarks.bare_sampler --count 2000 --steps 5 --guidance 1 --batch-size 64
Prints one JSON line: images/s of the sampling loop (model loading and, with --compile, the
compilation excluded). It samples through ImageGenerator.stream, the actors' own loop, so on a GPU
the next micro-batch's noise is drawn on the noise threads while the GPU samples.
"""
from __future__ import annotations

import json
import time

import click
import torch

from novarch_batch.pipeline.cli_options import sampling_option
from novarch_batch.workers.generate import ImageGenerator
from novarch_batch.workers.model import default_model_dir
from novarch_batch.workers.seeds import sample_seed
from novarch_batch.workers.spec import SHIPPED_MODEL, SamplingConfig


@click.command()
@click.option("--count", default=2000)
@click.option("--sampler", default="ddpm")
@click.option("--steps", default=5)
@click.option("--guidance", default=1.0)
@click.option("--class", "class_name", default="building")
@sampling_option("guidance_interval")
@click.option("--batch-size", default=64)
@click.option("--threads", default=2)
@click.option("--device", default="auto")
@click.option("--contiguous", is_flag=True, help="NCHW network instead of the channels-last one CPU actors use.")
@click.option("--channels-last", is_flag=True, help="NHWC network on a GPU too (GPU actors use NCHW).")
@click.option("--model", default=SHIPPED_MODEL, show_default=True, help="A shipped model's name.")
@click.option("--compile", "compiled", is_flag=True, help="torch.compile the network (submit --compile).")
@click.option("--noise-threads", type=int, default=None, help="Threads drawing noise ahead [default: 4 on a GPU, 0 on a CPU].")
def main(count, sampler, steps, guidance, class_name, guidance_interval, batch_size, threads, device, contiguous, channels_last, model, compiled,
         noise_threads):
    torch.set_num_threads(threads)
    generator = ImageGenerator(default_model_dir(model), device, noise_threads=noise_threads, compile=compiled)
    if contiguous:
        generator.unet = generator.unet.to(memory_format=torch.contiguous_format)
    if channels_last:
        generator.unet = generator.unet.to(memory_format=torch.channels_last)
    sampling = SamplingConfig(class_name=class_name, sampler=sampler, steps=steps, guidance=guidance, guidance_interval=guidance_interval)
    seeds = [sample_seed(0, i) for i in range(count)]
    batches = [seeds[lo:lo + batch_size] for lo in range(0, count, batch_size)]
    t0 = time.perf_counter()
    for _ in generator.stream(batches[:2], sampling):  # warm-up: kernels, allocator, compilation
        pass
    warm_up = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in generator.stream(batches, sampling):  # each batch ends in a copy to the host: the GPU's work is done
        pass
    seconds = time.perf_counter() - t0
    print(json.dumps({"images": count, "seconds": seconds, "images_per_second": count / seconds, "device": str(generator.device),
                      "model": model, "sampler": sampler, "steps": steps, "guidance": guidance,
                      "guidance_interval": guidance_interval, "class": class_name, "batch_size": batch_size,
                      "network_evaluations_per_image": sampling.network_evaluations(), "compile": compiled,
                      "noise_threads": generator.noise_threads, "warm_up_seconds": warm_up,
                      "memory_format": "channels_last" if channels_last or (generator.device.type == "cpu" and not contiguous)
                      else "contiguous"}))


if __name__ == "__main__":
    main()
