"""Generative image editors: diffusers image-editing pipelines pinned by model, revision and settings.

An :class:`EditorPreset` names the pipeline class, the model on the Hugging Face Hub and its
revision, the steps, guidance and seed, and any settings of the pipeline's own. `load_editor`
loads it from the hub (the revision resolved to the commit it names, which the edits record) or
from a local copy (``pipeline_dir``: a snapshot of the model, or a folder that diffusers'
``save_pretrained`` wrote, pinned by a hash over its files). Presets:

- ``qwen-image-edit``: ``Qwen/Qwen-Image-Edit-2511`` through ``QwenImageEditPlusPipeline`` with
  FeatMap's settings (10 steps, guidance_scale 1.0, true_cfg_scale 4.5, seed 42); FeatMap reports
  about 57 GB of GPU memory and 30 s an image.
- ``instruct-pix2pix``: ``timbrooks/instruct-pix2pix`` through
  ``StableDiffusionInstructPix2PixPipeline`` (20 steps, guidance 7.5 for the prompt and 1.5 for the
  image, the paper's defaults; seed 42): a few GB of GPU memory.

Every image is edited with a fresh CPU generator seeded with the preset's seed, so an edit
depends on its image, prompt and settings alone, not on the order or the device's generator.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from PIL import Image

from featbench.core.errors import AssetError, FeatbenchError
from featbench.core.hashing import sha256_file, sha256_json
from featbench.core.plugins import Registry


@dataclass(frozen=True)
class EditorPreset:
    name: str
    pipeline: str  # the diffusers pipeline class
    model_id: str  # on the Hugging Face Hub
    revision: str  # a commit, tag or branch; resolved to its commit when loaded
    steps: int
    guidance_scale: float
    seed: int
    settings: Mapping[str, Any] = field(default_factory=dict)  # further arguments of the pipeline's call
    dtype: str = "bfloat16"  # on a GPU; float32 on a CPU
    description: str = ""


EDITORS: Registry[EditorPreset] = Registry("editor preset")


def register_editor(preset: EditorPreset) -> EditorPreset:
    return EDITORS.add(preset.name, preset)


register_editor(EditorPreset(
    "qwen-image-edit", "QwenImageEditPlusPipeline", "Qwen/Qwen-Image-Edit-2511", "main", steps=10,
    guidance_scale=1.0, seed=42, settings={"true_cfg_scale": 4.5, "negative_prompt": " "},
    description="FeatMap's editor and settings; about 57 GB of GPU memory, 30 s an image"))
register_editor(EditorPreset(
    "instruct-pix2pix", "StableDiffusionInstructPix2PixPipeline", "timbrooks/instruct-pix2pix", "main", steps=20,
    guidance_scale=7.5, seed=42, settings={"image_guidance_scale": 1.5}, dtype="float16",
    description="a smaller editor (Stable Diffusion 1.5 size): a few GB of GPU memory"))


@dataclass
class Editor:
    """A loaded preset: ``edit(image, prompt)`` gives the edited image."""

    preset: EditorPreset
    pipeline: Any
    origin: dict[str, str]  # {model_id, revision (a commit)} or {pipeline_dir, files_sha256}
    dtype: str

    def spec(self, prompt: str) -> dict[str, Any]:
        """Everything an edit depends on (the device and where a local copy lies aside): what a folder
        of its edits records."""
        p = self.preset
        origin = {k: v for k, v in self.origin.items() if k != "pipeline_dir"}
        return {"preset": p.name, "pipeline": p.pipeline, **origin, "prompt": prompt, "steps": p.steps,
                "guidance_scale": p.guidance_scale, "seed": p.seed, "settings": dict(p.settings), "dtype": self.dtype}

    def edit(self, image: Image.Image, prompt: str) -> Image.Image:
        p = self.preset
        out = self.pipeline(image=image, prompt=prompt, num_inference_steps=p.steps, guidance_scale=p.guidance_scale,
                            generator=torch.Generator().manual_seed(p.seed), output_type="pil", **p.settings)
        return out.images[0]


def files_sha256(folder: Path) -> str:
    """A hash over a folder's files (relative path and sha256 of each): pins a local pipeline copy."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(s.startswith(".") for s in
                                                                            p.relative_to(folder).parts))
    return sha256_json([[p.relative_to(folder).as_posix(), sha256_file(p)] for p in files])


def _hub_commit(preset: EditorPreset, revision: str) -> tuple[str, bool]:
    """The commit `revision` names, and whether the model must come from the local hub cache (offline)."""
    import huggingface_hub

    try:
        return huggingface_hub.HfApi().model_info(preset.model_id, revision=revision).sha, False
    except Exception as exc:  # offline, or an unknown id or revision
        cached = huggingface_hub.try_to_load_from_cache(preset.model_id, "model_index.json", revision=revision)
        if isinstance(cached, str):  # .../snapshots/<commit>/model_index.json, downloaded before
            return Path(cached).parent.name, True
        raise AssetError(
            f"cannot load the editor {preset.name}: the Hugging Face Hub is unreachable or has no {preset.model_id} at "
            f"revision {revision} ({type(exc).__name__}: {str(exc)[:200]}), and the hub cache here holds no copy. "
            f"`featbench edit` downloads the model once where the hub is reachable; offline, give a local copy with "
            f"--pipeline-dir DIR (a snapshot of {preset.model_id}, or a folder that diffusers' save_pretrained "
            "wrote)") from exc


def load_editor(name: str, pipeline_dir: str | Path | None = None, revision: str | None = None,
                device: str | None = None) -> Editor:
    """The preset `name` (see `EDITORS`), from the hub at `revision` (default: the preset's) or from
    `pipeline_dir`, on `device` (default: CUDA where there is one, else the CPU)."""
    preset = EDITORS.lookup(name)
    # transformers holds the editors' text encoders; diffusers imports it only when a pipeline needs it.
    missing = [m for m in ("diffusers", "transformers", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise FeatbenchError(f"editing needs {', '.join(missing)}: pip install 'featbench[edit]'")
    import diffusers

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = preset.dtype if torch.device(device).type == "cuda" else "float32"
    if pipeline_dir is not None:
        folder = Path(pipeline_dir).expanduser().resolve()
        index = folder / "model_index.json"
        if not index.is_file():
            raise AssetError(f"{folder} is not a diffusers pipeline folder: it has no model_index.json")
        found = json.loads(index.read_text()).get("_class_name")
        if found != preset.pipeline:
            raise AssetError(f"{folder} holds a {found}, the preset {preset.name} runs a {preset.pipeline}")
        origin, where, kwargs = {"pipeline_dir": str(folder), "files_sha256": files_sha256(folder)}, str(folder), {}
    else:
        commit, offline = _hub_commit(preset, revision or preset.revision)
        origin, where = {"model_id": preset.model_id, "revision": commit}, preset.model_id
        kwargs = {"revision": commit, "local_files_only": offline}
    try:
        pipeline = getattr(diffusers, preset.pipeline).from_pretrained(where, dtype=getattr(torch, dtype),
                                                                      **kwargs)
    except Exception as exc:
        raise AssetError(f"cannot load the {preset.pipeline} of editor {preset.name} from {where}: "
                         f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)  # one bar over the images, not one per image
    return Editor(preset, pipeline, origin, dtype)
