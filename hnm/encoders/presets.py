"""Pathology foundation models as named encoder presets (`encoder.preset`), torch-free.

A preset fixes everything that must match the published weights for their features to mean
anything: the architecture (hnm.encoders.vit, in timm's parameter names, so the published files
load unchanged), the input (pixels per side, the resolution the model was trained at, mean/std,
channel order), the output (CLS token, or CLS concatenated with the mean of the patch tokens where
the model card says so) and the weight file users download themselves. The numbers come from each
model card and the timm arguments its loading code passes (docs/foundation.md lists the sources).

Torch-free so that the workflow can check a preset against the tiling while it builds the DAG.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hnm.core.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A tiling resolution within this relative distance of one the model was trained at counts as it.
MPP_TOLERANCE = 0.1
OUTPUTS = ("cls", "cls_mean_patch")
MLPS = ("gelu", "swiglu_packed")
# Layers of a block that LoRA adapters may sit on (hnm.encoders.lora): the attention's fused
# query-key-value and output projections, and the MLP's two layers.
LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")


@dataclass(frozen=True)
class Preset:
    """One published encoder. `vit` is the keyword set of hnm.encoders.vit.VisionTransformer."""

    name: str
    title: str
    vit: dict[str, Any]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mpp: tuple[float, ...]  # resolutions (um/px) it was trained at
    card: str  # model card URL
    weight_files: tuple[str, ...]  # the files of the model card that load as they are
    timm_call: str  # how the model card builds it in timm, for the docs and error messages
    channel_order: str = "rgb"
    needs_weights: bool = True  # False: random init allowed (the test preset only)
    notes: str = ""

    @property
    def img_size(self) -> int:
        return int(self.vit["img_size"])

    @property
    def embed_dim(self) -> int:
        return int(self.vit["embed_dim"])

    @property
    def feature_dim(self) -> int:
        return self.embed_dim * (2 if self.vit["output"] == "cls_mean_patch" else 1)

    @property
    def dynamic_img_size(self) -> bool:
        return bool(self.vit["dynamic_img_size"])

    def reduced(self, depth: int = 2, heads: int = 2, head_dim: int = 8) -> "Preset":
        """The same network with fewer, narrower blocks: every kind of parameter (registers,
        layer scale, packed SwiGLU, position embedding layout, output) and every name stays, so
        tests can load, run and refuse files of this layout without gigabytes of weights."""
        dim = heads * head_dim
        ratio = self.vit["mlp_hidden"] / self.embed_dim
        hidden = int(dim * ratio) // 2 * 2  # the packed SwiGLU halves it
        vit = {**self.vit, "depth": depth, "num_heads": heads, "embed_dim": dim}
        vit["mlp_hidden"] = hidden
        return replace(self, name=f"{self.name}-reduced", vit=vit)


def _vit(
    *,
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_hidden: int,
    mlp: str,
    reg_tokens: int = 0,
    no_embed_class: bool = False,
    init_values: float | None = 1e-5,
    dynamic_img_size: bool = False,
    output: str = "cls",
) -> dict[str, Any]:
    return {
        "img_size": img_size,
        "patch_size": patch_size,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_hidden": mlp_hidden,
        "mlp": mlp,
        "reg_tokens": reg_tokens,
        "no_embed_class": no_embed_class,
        "init_values": init_values,
        "dynamic_img_size": dynamic_img_size,
        "output": output,
    }


# timm sizes an MLP's hidden layer as int(embed_dim * mlp_ratio); the packed SwiGLU's fc1 has that
# many outputs and its fc2 half as many inputs. The hidden sizes below are those integers.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="uni",
            title="UNI (Mahmood Lab), ViT-L/16",
            vit=_vit(
                img_size=224,
                patch_size=16,
                embed_dim=1024,
                depth=24,
                num_heads=16,
                mlp_hidden=4096,  # mlp_ratio 4
                mlp="gelu",
                dynamic_img_size=True,
            ),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            mpp=(0.5,),
            card="https://huggingface.co/MahmoodLab/UNI",
            weight_files=("pytorch_model.bin",),
            timm_call=(
                'timm.create_model("vit_large_patch16_224", img_size=224, patch_size=16, '
                "init_values=1e-5, num_classes=0, dynamic_img_size=True)"
            ),
        ),
        Preset(
            name="uni2_h",
            title="UNI2-h (Mahmood Lab), ViT-H/14-style, 8 registers, SwiGLU",
            vit=_vit(
                img_size=224,
                patch_size=14,
                embed_dim=1536,
                depth=24,
                num_heads=24,
                mlp_hidden=8192,  # int(1536 * 2.66667 * 2)
                mlp="swiglu_packed",
                reg_tokens=8,
                no_embed_class=True,
                dynamic_img_size=True,
            ),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            mpp=(0.5,),
            card="https://huggingface.co/MahmoodLab/UNI2-h",
            weight_files=("pytorch_model.bin",),
            timm_call=(
                'timm.create_model("vit_giant_patch14_224", img_size=224, patch_size=14, depth=24, '
                "num_heads=24, init_values=1e-5, embed_dim=1536, mlp_ratio=2.66667*2, "
                "num_classes=0, no_embed_class=True, mlp_layer=SwiGLUPacked, act_layer=SiLU, "
                "reg_tokens=8, dynamic_img_size=True)"
            ),
        ),
        Preset(
            name="virchow2",
            title="Virchow2 (Paige), ViT-H/14, 4 registers, SwiGLU; CLS + mean patch token",
            vit=_vit(
                img_size=224,
                patch_size=14,
                embed_dim=1280,
                depth=32,
                num_heads=16,
                mlp_hidden=6832,  # int(1280 * 5.3375)
                mlp="swiglu_packed",
                reg_tokens=4,
                dynamic_img_size=True,
                output="cls_mean_patch",
            ),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            mpp=(2.0, 1.0, 0.5, 0.25),  # trained on tiles at 5x, 10x, 20x and 40x
            card="https://huggingface.co/paige-ai/Virchow2",
            weight_files=("model.safetensors", "pytorch_model.bin"),
            timm_call=(
                'timm.create_model("vit_huge_patch14_224", img_size=224, init_values=1e-5, '
                'num_classes=0, mlp_ratio=5.3375, reg_tokens=4, global_pool="", '
                "dynamic_img_size=True, mlp_layer=SwiGLUPacked, act_layer=SiLU)"
            ),
            notes="the embedding is the CLS token concatenated with the mean of the 256 patch "
            "tokens (registers left out): 2 x 1280 = 2560",
        ),
        Preset(
            name="h_optimus_0",
            title="H-optimus-0 (Bioptimus), ViT-g/14, 4 registers, SwiGLU",
            vit=_vit(
                img_size=224,
                patch_size=14,
                embed_dim=1536,
                depth=40,
                num_heads=24,
                mlp_hidden=8192,  # int(1536 * 2.66667 * 2)
                mlp="swiglu_packed",
                reg_tokens=4,
                no_embed_class=True,
            ),
            mean=(0.707223, 0.578729, 0.703617),
            std=(0.211883, 0.230117, 0.177517),
            mpp=(0.5,),
            card="https://huggingface.co/bioptimus/H-optimus-0",
            weight_files=("model.safetensors", "pytorch_model.bin"),
            timm_call=(
                'timm.create_model("vit_giant_patch14_reg4_dinov2", img_size=224, '
                'init_values=1e-5, num_classes=0, global_pool="token", dynamic_img_size=False)'
            ),
        ),
        Preset(
            name="prov_gigapath",
            title="Prov-GigaPath tile encoder, ViT-g (16 px patches), SwiGLU",
            vit=_vit(
                img_size=224,
                patch_size=16,
                embed_dim=1536,
                depth=40,
                num_heads=24,
                mlp_hidden=8192,  # int(1536 * 5.33334)
                mlp="swiglu_packed",
            ),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            mpp=(0.5,),
            card="https://huggingface.co/prov-gigapath/prov-gigapath",
            weight_files=("pytorch_model.bin",),
            timm_call=(
                'timm.create_model("vit_giant_patch14_dinov2", img_size=224, in_chans=3, '
                "patch_size=16, embed_dim=1536, depth=40, num_heads=24, init_values=1e-5, "
                "mlp_ratio=5.33334, num_classes=0)"
            ),
            notes="named ViT-g/14 after timm's base model, but its config overrides the patch "
            "size to 16 (14 x 14 patches of a 224 px tile) and keeps a fixed input size",
        ),
        Preset(
            name="vit_tiny_test",
            title="a tiny ViT for tests and demos (3 blocks, 48 wide, 32 px input)",
            vit=_vit(
                img_size=32,
                patch_size=8,
                embed_dim=48,
                depth=3,
                num_heads=4,
                mlp_hidden=128,
                mlp="swiglu_packed",
                reg_tokens=2,
                no_embed_class=True,
                output="cls_mean_patch",
            ),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            mpp=(2.0,),  # the demo's tiling
            card="",
            weight_files=(),
            timm_call="",
            needs_weights=False,
            notes="no published weights: random ones from the seed, or a file written in its "
            "layout; the same code path as the published presets, small enough for CI",
        ),
    )
}


def preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called `name`; an unknown name is a ConfigError that lists the known ones."""
    if name not in PRESETS:
        raise ConfigError(
            f"encoder.preset '{name}' is not a known preset; choose one of {', '.join(PRESETS)}"
        )
    return PRESETS[name]


def weights_hint(preset: Preset) -> str:
    """Where a preset's weights come from, for error messages."""
    if not preset.weight_files:
        return "this preset has no published weights"
    files = " or ".join(preset.weight_files)
    return f"download {files} from {preset.card} (accept its terms there) and name it here"


@dataclass(frozen=True)
class TilingCheck:
    """The problems (each a sentence) of tiling a slide for a preset, and notes for the log."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_tiling(
    preset: Preset, patch_size: int, target_mpp: float, allow_other_mpp: bool
) -> TilingCheck:
    """Patch size and resolution of the tiling against what the preset was trained on.

    A foundation model fed another magnification than it was trained at still gives features, but
    they mean something else (cells twice as large, say), which is easy to miss: unless
    `allow_other_mpp`, that is a problem. A patch size other than the preset's input needs a
    model that interpolates its position embedding (dynamic image size); otherwise it is a problem.
    """
    check = TilingCheck()
    text = resolution_mismatch(preset.name, preset.mpp, target_mpp)
    if text and allow_other_mpp:
        check.notes.append(text + "; going on because encoder.allow_other_mpp is true")
    elif text:
        check.problems.append(text + resolution_advice(preset.mpp))
    if patch_size != preset.img_size:
        if preset.dynamic_img_size:
            check.notes.append(
                f"encoder.preset {preset.name} takes {preset.img_size} px tiles; {patch_size} px "
                "ones are fed with its position embedding interpolated (dynamic image size)"
            )
        else:
            check.problems.append(
                f"encoder.preset {preset.name} takes {preset.img_size} px tiles only (its "
                f"position embedding is fixed), but tile.patch_size is {patch_size}; set "
                f"tile.patch_size to {preset.img_size}"
            )
    return check


def resolution_mismatch(name: str, trained: tuple[float, ...], target_mpp: float) -> str:
    """A sentence saying that `target_mpp` is none of the resolutions the preset was trained
    at (within MPP_TOLERANCE), or "" where it is one of them (or the preset names none)."""
    if not trained or any(abs(target_mpp - m) <= MPP_TOLERANCE * m for m in trained):
        return ""
    listed = " or ".join(f"{m:g}" for m in trained)
    return (
        f"encoder.preset {name} was trained at {listed} um/px, but the patches are tiled at "
        f"{target_mpp:g} um/px (tile.target_mpp)"
    )


def resolution_advice(trained: tuple[float, ...]) -> str:
    return (
        f"; set tile.target_mpp to {trained[0]:g}, or encoder.allow_other_mpp to true to use it "
        "at another resolution anyway"
    )


def workflow_problems(config: dict[str, Any]) -> TilingCheck:
    """What the workflow checks while it builds the DAG, before any job: a preset's weights file
    named, the tiling fit for it, and LoRA asked for only on a preset encoder."""
    encoder, tile = config["encoder"], config["tile"]
    finetune_lora = config["finetune"]["adapter"] == "lora" and int(config["rounds"]) > 0
    if not encoder["preset"]:
        problems = []
        if finetune_lora:
            problems.append(
                "finetune.adapter lora needs a foundation-model encoder (encoder.preset); "
                f"{encoder['arch']} has no attention projections to adapt: set encoder.preset, "
                "or finetune.adapter none"
            )
        return TilingCheck(problems)
    preset = get_preset(encoder["preset"])
    check = check_tiling(
        preset, int(tile["patch_size"]), float(tile["target_mpp"]), bool(encoder["allow_other_mpp"])
    )
    if preset.needs_weights and not encoder["weights"]:
        check.problems.append(
            f"encoder.preset {preset.name} needs its published weights in encoder.weights: "
            f"{weights_hint(preset)}"
        )
    return check
