"""Foundation-model presets: size of each, and CPU speed and memory of the tiny test preset.

Prints (and with --json writes):
1. per preset, counted on the meta device (nothing allocated): parameters, float32 weight bytes,
   feature width, the LoRA adapters' parameters at the default settings (rank 8 on qkv and proj of
   every block), and the size of a round's encoder file without its optimizer state (adapters +
   projection head, float32);
2. for the tiny test preset on the CPU (1 thread): extraction img/s (eval, fp32, batch 64), one
   LoRA SupCon step (batch 32, two views) in seconds, with and without gradient checkpointing,
   and the process's peak RSS.
The published presets cannot run on a 2-core CPU in useful time; their GPU figures are measured by
whoever has one (docs/foundation.md says which are not).

Usage: python bench/bench_foundation.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hnm.encoders.base_weights import build_vit  # noqa: E402
from hnm.encoders.foundation import add_adapters, build_preset_encoder  # noqa: E402
from hnm.encoders.lora import LoraConfig, target_layers  # noqa: E402
from hnm.encoders.presets import PRESETS  # noqa: E402
from hnm.finetune.settings import FinetuneSettings  # noqa: E402
from hnm.finetune.train import contrastive_update, make_optimizer  # noqa: E402


def sizes() -> list[dict[str, float]]:
    rows = []
    for name, preset in PRESETS.items():
        model = build_vit(preset.vit, "meta")
        params = sum(p.numel() for p in model.parameters())
        adapters = 0
        for layer in target_layers(model, LoraConfig()):
            linear = model.get_submodule(layer)
            adapters += 8 * (linear.in_features + linear.out_features)
        d = preset.feature_dim
        head = d * d + d + d * 256 + 256
        rows.append(
            {
                "preset": name,
                "parameters": params,
                "weights_gb_fp32": params * 4 / 1e9,
                "feature_dim": d,
                "lora_parameters": adapters,
                "encoder_file_mb": (adapters + head) * 4 / 1e6,
            }
        )
    return rows


def tiny_speed() -> dict[str, float]:
    torch.set_num_threads(1)
    model = build_preset_encoder("vit_tiny_test", "", seed=0, proj_dim=256).eval()
    x = torch.rand(64, 3, 32, 32)
    with torch.inference_mode():
        model.features(x)
        started, n = time.perf_counter(), 0
        while time.perf_counter() - started < 3:
            model.features(x)
            n += len(x)
    out = {"extract_img_s": n / (time.perf_counter() - started)}
    for checkpointing in (False, True):
        model = build_preset_encoder("vit_tiny_test", "", seed=0, proj_dim=256)
        add_adapters(model, LoraConfig(), seed=0)
        model.backbone.gradient_checkpointing = checkpointing
        settings = FinetuneSettings(adapter="lora")
        optimizer = make_optimizer(model, settings, None)
        views = torch.rand(64, 3, 32, 32)
        labels = torch.tensor([0] * 26 + [1] * 6)
        contrastive_update(model, optimizer, views, labels, "negative", settings, "fp32")
        started = time.perf_counter()
        for _ in range(5):
            contrastive_update(model, optimizer, views, labels, "negative", settings, "fp32")
        key = "lora_step_s_checkpointing" if checkpointing else "lora_step_s"
        out[key] = (time.perf_counter() - started) / 5
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    report = {"presets": sizes(), "tiny_cpu": tiny_speed(), "torch": torch.__version__}
    for row in report["presets"]:
        print(
            f"{row['preset']:14s} {row['parameters'] / 1e6:9.1f} M params "
            f"{row['weights_gb_fp32']:6.2f} GB fp32  {row['feature_dim']:5d}-d  "
            f"LoRA {row['lora_parameters'] / 1e6:5.2f} M  encoder file ~{row['encoder_file_mb']:.1f} MB"
        )
    print("tiny test preset on the CPU (1 thread):", json.dumps(report["tiny_cpu"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
