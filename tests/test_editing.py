"""`featbench edit`: a diffusers editing pipeline over a suite's images into an edit-pair dataset,
end to end on a tiny random-weight InstructPix2Pix pipeline (plumbing only: its edits are noise)."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from featbench.cli import main
from featbench.core.results import read_result
from featbench.data.edit_pairs import METADATA, read_edit_pairs
from featbench.zoo.editors import EDITORS
from tests.conftest import TINY_CNN, make_tiny_suite

PROMPT = "make it blue"


@pytest.fixture(scope="module")
def tiny_pix2pix(tmp_path_factory) -> Path:
    """A StableDiffusionInstructPix2PixPipeline of tiny random-weight components, saved as a local
    pipeline folder (what --pipeline-dir takes); its tokenizer reads a vocabulary written here."""
    import torch
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny-pix2pix")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab_file=str(root / "vocab.json"), merges_file=str(root / "merges.txt"),
                              model_max_length=16)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=8, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8), in_channels=3, out_channels=3,  # latents at 1/4 size
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        latent_channels=4, norm_num_groups=4, sample_size=32)
    pipeline = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=EulerAncestralDiscreteScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(root / "pipeline")
    return root / "pipeline"


@pytest.fixture(autouse=True)
def two_steps(monkeypatch):
    """The instruct-pix2pix preset with 2 denoising steps instead of 20: the tiny pipeline's edits are noise anyway."""
    monkeypatch.setitem(EDITORS, "instruct-pix2pix", dataclasses.replace(EDITORS["instruct-pix2pix"], steps=2))


@pytest.fixture
def suite(tmp_path, private_cache):
    return make_tiny_suite(tmp_path / "suite", 6, backbones={TINY_CNN: ["blocks.3"]})


def edit(suite, pipeline: Path, out: Path, prompt: str = PROMPT) -> list[str]:
    return ["edit", "--suite", str(suite.path), "--editor", "instruct-pix2pix", "--pipeline-dir", str(pipeline),
            "--prompt", prompt, "--out", str(out)]


def hashes(folder: Path) -> dict[str, str]:
    return {p.image_id: p.edited_sha256 for p in read_edit_pairs(folder).pairs.values()}


@pytest.mark.slow
def test_edit_then_build_and_score_the_edits(suite, tiny_pix2pix, tmp_path, capsys):
    out = tmp_path / "pairs"
    assert main(edit(suite, tiny_pix2pix, out)) == 0
    printed = capsys.readouterr().out
    assert "edited 6 images, kept 0 edited before (6 pairs in all)" in printed
    pairs = read_edit_pairs(out)
    assert sorted(pairs.pairs) == sorted(r.image_id for r in suite.image_source().records)
    assert f"manifest sha256: {pairs.manifest_sha256}" in printed
    assert all(pairs.file_problem(i) is None and pairs.file_problem(i, "original") is None for i in pairs.pairs)

    # Deterministic under the preset's seed: a second run elsewhere (of the first two images) makes the same files.
    assert main(edit(suite, tiny_pix2pix, tmp_path / "again") + ["--limit", "2"]) == 0
    made = hashes(out)
    assert hashes(tmp_path / "again") == {i: made[i] for i in sorted(made)[:2]}

    # Resumable: only the missing edit is made again, and it is the same.
    first = sorted(pairs.pairs)[0]
    (out / pairs.pairs[first].edited_file_name).unlink()
    capsys.readouterr()
    assert main(edit(suite, tiny_pix2pix, out)) == 0
    assert "edited 1 images, kept 5 edited before" in capsys.readouterr().out
    assert hashes(out) == made

    # The printed entry scores the edits: build (reading the pairs, never editing) and run.
    entry = yaml.safe_load(printed.split("manipulations (once published: source hf:ID@REVISION):\n")[1])
    assert entry == [{"name": "edit_pairs.make-it-blue",
                      "params": {"source": str(out.resolve()), "manifest_sha256": pairs.manifest_sha256}}]
    raw = yaml.safe_load(Path(suite.path).read_text())
    suite_file = tmp_path / "edited.yaml"
    suite_file.write_text(yaml.safe_dump({**raw, "manipulations": ["hflip", *entry]}))
    assert main(["build", "--suite", str(suite_file), "--batch-size", "4", "--no-compile"]) == 0
    result = tmp_path / "linear.json"
    assert main(["run", "--suite", str(suite_file), "--model", "linear", "--tasks", "edit_pairs", "--isolation",
                 "process", "--n-boot", "10", "--out", str(result)]) == 0
    tasks = read_result(result)["tasks"]
    assert [t["task_id"] for t in tasks] == [f"map/{TINY_CNN}/blocks.3/edit_pairs.make-it-blue"]
    assert tasks[0]["category"] == "semantic"


@pytest.mark.slow
def test_missing_edits_name_the_command_that_makes_them_and_other_edits_are_refused(suite, tiny_pix2pix, tmp_path,
                                                                                      capsys):
    out = tmp_path / "pairs"
    assert main(edit(suite, tiny_pix2pix, out) + ["--limit", "1"]) == 0
    entry = yaml.safe_load(capsys.readouterr().out.split("(once published: source hf:ID@REVISION):\n")[1])
    raw = yaml.safe_load(Path(suite.path).read_text())
    suite_file = tmp_path / "edited.yaml"
    suite_file.write_text(yaml.safe_dump({**raw, "manipulations": entry}))
    assert main(["build", "--suite", str(suite_file), "--no-compile"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"has no edit of \d of the \d (train|test) images of the suite", err)
    command = re.search(r"make them with `(featbench edit [^`]*)` \(it resumes", err).group(1)

    # Edits made otherwise never join these, and nothing there is touched.
    before = (out / METADATA).read_bytes()
    assert main(edit(suite, tiny_pix2pix, out, prompt="make it red") + ["--name", "make-it-blue"]) == 2
    err = capsys.readouterr().err
    assert f"{out.resolve()} holds edits made otherwise (there prompt='make it blue')" in err
    assert "write these edits to another folder (--out)" in err
    assert (out / METADATA).read_bytes() == before

    # The command that the build's error names makes the rest.
    assert main(shlex.split(command)[1:]) == 0
    assert "edited 5 images, kept 1 edited before (6 pairs in all)" in capsys.readouterr().out


def test_offline_the_editor_names_the_model_and_the_local_way(suite, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # no hub, here or anywhere
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # and no copy of the model
    for editor, model in (("instruct-pix2pix", "timbrooks/instruct-pix2pix"),
                          ("qwen-image-edit", "Qwen/Qwen-Image-Edit-2511")):
        assert main(["edit", "--suite", str(suite.path), "--editor", editor, "--prompt", PROMPT]) == 2
        err = capsys.readouterr().err
        assert f"the Hugging Face Hub is unreachable or has no {model} at revision main" in err
        assert "offline, give a local copy with --pipeline-dir DIR" in err
