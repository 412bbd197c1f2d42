"""Build the course's tiny Stable Diffusion from scratch, on CPU.

    python -m sdcourse.training.build_model --out sdcourse/assets/tiny-sd
    SDCOURSE_FAST=1 python -m sdcourse.training.build_model   # the same, in miniature

Stages, one function each below, each resumable (run the same command again after an interrupt):

1. draw a fixed training set of shape pictures with several captions each; under the caption
   rule (config.class_share, colourless_share) stars and pink are among them, a star only ever
   called "shape" and pink only in captions that name no colour;
2. train the VAE on fresh pictures of the whole shapes world (the star included) and photo
   crops; set scaling_factor = 1 / latent std; then train its decoder on alone (encoder
   frozen, as SD's ft-MSE VAE). It needs no captions, so it comes first, and
   `--stop-after vae_decoder` trains and measures it alone;
3. train a tiny CLIP contrastively, on the training set and on pairs of pictures that differ
   in one thing their captions state (a shape, a position, a size, which colour goes with
   which shape); then train its image encoder on alone against the locked text encoder; then
   both halves again, so that the text encoder learns the words for what the image encoder
   now sees (shapes, positions); under a caption rule, train both halves once more on its
   captions (the class word "shape"); keep its text encoder;
4. encode the training set once, caching the latent distributions;
5. train the U-Net (epsilon prediction, SD schedule, 10% empty captions, EMA weights), the
   text encoder training along at config.text_encoder_lr_scale times its learning rate;
5b. under a caption rule, the U-Net's class phase: it trains on, on fresh pictures in which
   half of what "shape" names is stars, until its "shape" covers all four shapes;
6. train a shape/colour classifier with the evaluator's recipe (a figure about the recipe:
   comparisons keep using the fixed judge, sdcourse/assets/shape_classifier.safetensors);
7. save one StableDiffusionPipeline folder (safetensors) to --out.

Everything else goes to the run folder (default runs/tiny-sd, or runs/tiny-sd-fast): the
cached data, checkpoints, sample grids (samples/*.png), build_log.json with the time taken,
the CLIP's image half (tiny-clip/), the classifier (shape_classifier.safetensors) and the
pipeline folder while it is being written. Nothing is written outside --run and --out, and
--out is claimed first: a folder holding files this build did not write is refused unless
--overwrite (as when rebuilding the shipped model into sdcourse/assets/tiny-sd).
Every network trains with the same loop (trainer.py). A stage that was interrupted resumes
from its checkpoint. Only the settings in trainer.MAY_CHANGE_ON_RESUME (the step counts among
them) may differ from the checkpoint's; any other change stops the run with a message that
names it. So `--unet-steps 5000` trains a finished run on.

A stage is finished when its marker (finished/<folder>.json in the run folder, written after its
last file) lists its files and each loads; a finished stage is reused only when the settings it
records (`STAGE_OUTPUTS`) are this run's, else the build stops, naming them. A stage folder
without a marker (made before markers, as build-stages/second-edition keeps them) counts as
finished when every file of it loads; its marker is written then.

`--size lab` is a build for a 90-minute lab (`config.lab_config`): it takes the shipped model's
VAE and text encoder as they are (stages 2 and 3 load them instead of training), draws its
pictures without the caption rule, trains a smaller U-Net for minutes, and has no class phase
and no classifier of its own. A run folder holds builds of one size only.

From Python, `main(arguments, training_loss=..., ema_update=..., encode_latents=...)` runs the
same build with a learner's pieces (the capstone, lesson 14; `pieces.py` says what each must
do) in place of the course's own, says which pieces it uses, and tries each given one on one
batch before training. Without them, as from the command line, it is the course's build.

On GPUs the same build runs under accelerate, on several of them, in mixed precision if asked:

    accelerate launch --multi_gpu --num_processes 2 -m sdcourse.training.build_model --mixed-precision bf16

Any setting of config.BuildConfig can be changed for one build with --set NAME=VALUE (a try of
another recipe, as in build-stages/third-edition-tries.md):

    python -m sdcourse.training.build_model --run runs/try --set text_encoder_lr_scale=1.0 --set clip_rule_steps=0
"""

from __future__ import annotations

import os

# On a shared machine, OpenMP threads that spin while waiting for each other make every
# operation several times slower; passive waiting avoids that. On cores the build has to itself,
# spinning (OMP_WAIT_POLICY=ACTIVE, set before the command) makes a U-Net step take 0.65 times as long:
# benchmarks/wait_policy.py. Read when torch loads, so it is set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from .. import fast_mode_requested  # noqa: E402
from ..files import files_problem, read_json, read_marker, write_json, write_marker  # noqa: E402
from ..evaluate import CLASSIFIER_FILE, classifier_accuracy, save_classifier, vae_round_trip  # noqa: E402
from ..loading import EMBEDDED_MODEL  # noqa: E402
from ..tokenizer import load_tokenizer  # noqa: E402
from . import config as config_mod  # noqa: E402
from .common import seed_everything, set_threads  # noqa: E402
from .config import (ADDED_SETTINGS, CLASS_PHASE_SETTINGS, CLIP_DATA_SETTINGS, CLIP_MODEL_SETTINGS, CLIP_RULE_SETTINGS,  # noqa: E402
                     DATA_SETTINGS, RULE_SETTINGS)
from ..data import shapes  # noqa: E402
from ..data.photos import photo_crops  # noqa: E402
from .datasets import (build_clip_set_of, build_contrast_set, build_rule_set, build_set_of, build_training_set,  # noqa: E402
                       caption_rules)
from .export import claim_pipeline_folder, folder_size_mb, save_clip_extras, save_pipeline  # noqa: E402
from .judge import train_classifier  # noqa: E402
from .pieces import BuildPieces, encode_training_set  # noqa: E402
from .trainer import PRECISIONS, CheckpointError  # noqa: E402
from .train_clip import (learn_class_words, refine_image_encoder, teach_words, train_clip, word_sensitivity,  # noqa: E402
                         zero_shot_accuracy)
from .train_unet import load_or_cache_latents, save_samples, train_unet  # noqa: E402
from .train_vae import VAE_SETTINGS, finetune_decoder, latent_scaling_factor, train_vae  # noqa: E402


@dataclass(frozen=True)
class StageOutput:
    """What a stage leaves in the run folder: its files (relative to the run folder) and the
    settings they were made with (by their names in config.BuildConfig)."""
    files: tuple
    settings: tuple


# (The VAE's settings include the data's: its scaling factor is measured on the training set.)
_VAE = (*DATA_SETTINGS, *VAE_SETTINGS, "vae_kl_weight", "vae_steps", "vae_lr")
_VAE_DECODER = (*_VAE, "vae_decoder_steps", "vae_decoder_lr")
_CLIP = (*DATA_SETTINGS, *CLIP_MODEL_SETTINGS, *CLIP_DATA_SETTINGS, "clip_steps", "clip_lr")
_CLIP_IMAGE = (*_CLIP, "clip_image_steps", "clip_image_lr")
_CLIP_WORDS = (*_CLIP_IMAGE, "clip_words_steps", "clip_words_lr")
_CLIP_RULE = (*_CLIP_WORDS, *CLIP_RULE_SETTINGS)
_CLASS_PHASE_DATA = (*DATA_SETTINGS, "colourless_share",
                     *(n for n in CLASS_PHASE_SETTINGS if n not in ("class_phase_steps", "class_phase_ema_decay")))
CLASS_PHASE = "class_phase"  # its folder in the run folder: data, latents, checkpoint, samples, U-Net
_CLASSIFIER = ("seed", "classifier_steps", "classifier_batch", "classifier_n_train")
_VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
_CLIP_FILES = ("config.json", "model.safetensors")

# The run folder's finished pieces, by their name there. The caches (.npz) are written atomically
# and have no marker, but are reused only with the settings they were drawn with, like the rest.
STAGE_OUTPUTS = {
    "train_set.npz": StageOutput(("train_set.npz",), (*DATA_SETTINGS, *RULE_SETTINGS)),
    "plain_set.npz": StageOutput(("plain_set.npz",), DATA_SETTINGS),
    "clip_set.npz": StageOutput(("clip_set.npz",), (*DATA_SETTINGS, *RULE_SETTINGS, "clip_concept_words")),
    "contrast_set.npz": StageOutput(("contrast_set.npz",), ("seed", "clip_contrast_set")),
    "contrast_rule_set.npz": StageOutput(("contrast_rule_set.npz",), ("seed", "clip_contrast_set", "clip_concept_words")),
    "vae": StageOutput(tuple(f"vae/{f}" for f in _VAE_FILES), _VAE),
    "vae_decoder": StageOutput(tuple(f"vae_decoder/{f}" for f in _VAE_FILES), _VAE_DECODER),
    "latents.npz": StageOutput(("latents.npz",), (*_VAE_DECODER, *RULE_SETTINGS)),
    # the class phase's pictures, and their latents (its steps may grow: not among their settings)
    f"{CLASS_PHASE}/train_set.npz": StageOutput((f"{CLASS_PHASE}/train_set.npz",), _CLASS_PHASE_DATA),
    f"{CLASS_PHASE}/latents.npz": StageOutput((f"{CLASS_PHASE}/latents.npz",), (*_VAE_DECODER, *_CLASS_PHASE_DATA)),
    "clip": StageOutput(tuple(f"clip/{f}" for f in _CLIP_FILES), _CLIP),
    "clip_refined": StageOutput(tuple(f"clip_refined/{f}" for f in _CLIP_FILES), _CLIP_IMAGE),
    "clip_words": StageOutput(tuple(f"clip_words/{f}" for f in _CLIP_FILES), _CLIP_WORDS),
    "clip_rule": StageOutput(tuple(f"clip_rule/{f}" for f in _CLIP_FILES), _CLIP_RULE),
    CLASSIFIER_FILE: StageOutput((CLASSIFIER_FILE,), _CLASSIFIER),
    "classifier.safetensors": StageOutput(("classifier.safetensors",), _CLASSIFIER),  # its name in older runs
}


class StageError(RuntimeError):
    """A run folder whose finished stages cannot be used: made with other settings, or damaged."""


def stage_marker(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / "finished" / f"{name}.json"


def check_run_folder(run_dir: Path, cfg, previous: dict | None):
    """Refuse a run folder whose finished stages were made with other settings than `cfg`'s,
    naming each such stage and setting. A stage's settings are its marker's; for a stage made
    before markers, those of the run folder's config.json (`previous`, None if there was none)."""
    changed = []
    for name, output in STAGE_OUTPUTS.items():
        if not (run_dir / name).exists():
            continue
        recorded = read_marker(stage_marker(run_dir, name))
        recorded = recorded["settings"] if recorded is not None else previous
        if recorded is None:
            continue
        asked = json.loads(json.dumps(cfg.pick(*output.settings)))  # tuples as lists, as JSON holds them
        recorded = json.loads(json.dumps({**ADDED_SETTINGS, **recorded}))  # as asked: tuples as lists
        missing = "(not set)"
        differ = [f"{key}={recorded.get(key, missing)!r} (this run: {value!r})"
                  for key, value in asked.items() if recorded.get(key, missing) != value]
        if differ:
            changed.append(f"{name}: made with " + ", ".join(differ))
    if changed:
        raise StageError(f"the run folder {run_dir} holds stages made with other settings:\n  " + "\n  ".join(changed)
                         + f"\nRun with their settings, give another --run, or delete those stages from {run_dir} "
                         "to make them again.")


class StageLog:
    """Times each stage and writes the figures to build_log.json as it goes (from one process only)."""
    def __init__(self, path: Path, write: bool = True):
        self.path = path
        self.write = write
        self.data = read_json(path, "build log") if path.exists() else {"stages": {}, "figures": {}}

    def stage(self, name, seconds):
        self.data["stages"][name] = self.data["stages"].get(name, 0.0) + round(seconds, 1)
        self.save()

    def figure(self, name, value, message=None):
        self.data["figures"][name] = value
        self.save()
        if message and self.write:
            print(f"{message}: {value}", flush=True)

    def save(self):
        if self.write:
            write_json(self.path, self.data)


class Build:
    """What the stages share: the settings, the folders, the log, and what earlier stages made.

    Under `accelerate launch` every process runs every stage (the training is shared between
    them); only the main process writes files and measures figures.
    """
    def __init__(self, cfg, run_dir: Path, out: Path, progress: bool, pieces: BuildPieces | None = None):
        self.cfg, self.run_dir, self.out, self.progress = cfg, Path(run_dir), Path(out), progress
        self.pieces = pieces or BuildPieces()  # a learner's pieces of the build (the capstone); none: the course's
        # This process as accelerate sees it (one of several under `accelerate launch`)
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
        self.main = self.accelerator.is_main_process
        self.log = StageLog(self.run_dir / "build_log.json", write=self.main)
        self.tokenizer = load_tokenizer()
        self.eval_n = 128 if cfg.fast else 1000  # pictures for the accuracy figures
        # Made by the stages, in order (clip_data: the same pictures, with the CLIP's captions):
        self._plain_data = None
        self.data = self.clip_data = self.photos = self.clip = self.text_encoder = self.vae = self.latents = self.unet = None

    @property
    def plain_data(self) -> dict:
        """The CLIP's first three phases learn from captions that always name the shape and the
        colour: the training set drawn without the caption rule (drawn when first needed, cached)."""
        if self._plain_data is None:
            if caption_rules(self.cfg)[0] is None:
                self._plain_data = self.data
            else:
                cfg = self.cfg
                with self.accelerator.main_process_first():
                    self._plain_data = build_training_set(cfg.n_train, cfg.captions_per_image, cfg.seed,
                                                          cfg.two_object_prob, cache=self.run_dir / "plain_set.npz",
                                                          progress=self.progress)
        return self._plain_data

    def save(self, model, name: str):
        """Save a stage's model into its folder of the run folder, then its marker."""
        if self.main:
            model.save_pretrained(str(self.run_dir / name))
            self.mark(name)

    def mark(self, name: str):
        """Write the marker of a finished stage output (after its last file)."""
        output = STAGE_OUTPUTS[name]
        write_marker(stage_marker(self.run_dir, name), self.run_dir, output.files, self.cfg.pick(*output.settings))


def data_stage(b: Build):
    """1. The fixed training set (drawn once, cached in the run folder) and the photo crops.
    Under a caption rule, the CLIP's copy of it (clip_set.npz) holds the same pictures with every
    second caption naming stars and pink by their own words; the CLIP's first phases read a set
    drawn without the rule (`Build.plain_data`)."""
    cfg = b.cfg
    with b.accelerator.main_process_first():
        b.data = build_set_of(cfg, b.run_dir / "train_set.npz", b.progress)
        if rule_phase_pending(b):  # the only stage that reads it
            b.clip_data = build_clip_set_of(cfg, b.data, b.run_dir / "clip_set.npz", b.progress)
    b.photos = None if reused(b, "vae") else photo_crops(cfg.n_photo_crops, cfg.seed)


def reused(b: Build, part: str) -> bool:
    """Whether the build takes this network ("vae", "text_encoder") from the shipped model as it is."""
    return part in b.cfg.reuse_shipped


def shipped_part(part: str):
    """The shipped model's VAE or text encoder, in float32 and frozen (the lab build's)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    folder = str(EMBEDDED_MODEL / part)
    if part == "vae":
        network = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32)
    else:
        network = CLIPTextModel.from_pretrained(folder, dtype=torch.float32)
    return network.eval().requires_grad_(False)


def rule_phase_on(cfg) -> bool:
    """Whether the build's CLIP has a rule phase (`clip_rule_stage`): a caption rule, and steps for it."""
    return caption_rules(cfg)[0] is not None and cfg.clip_rule_steps > 0


def rule_phase_pending(b: Build) -> bool:
    """Whether the CLIP's rule phase has still to train in this run."""
    return rule_phase_on(b.cfg) and not finished(b, "clip_rule")


def contrast_set(b: Build, with_concepts: bool = False) -> dict | None:
    """The CLIP's contrast pairs (drawn once, cached in the run folder), or None if it uses none.
    with_concepts: the rule phase's, whose pairs include stars when the CLIP says "star"."""
    if not b.cfg.clip_contrast_pairs:
        return None
    concepts = with_concepts and b.cfg.clip_concept_words
    with b.accelerator.main_process_first():
        return build_contrast_set(b.cfg.clip_contrast_set, b.cfg.seed,
                                  cache=b.run_dir / ("contrast_rule_set.npz" if concepts else "contrast_set.npz"),
                                  progress=b.progress, shapes_named=shapes.ALL_SHAPES if concepts else shapes.BASE_SHAPES)


def finished(b: Build, name: str) -> bool:
    """Whether the stage output `name` (`STAGE_OUTPUTS`) is finished: its marker lists its files
    and each loads. One with a marker but a file missing or damaged is refused by name. One
    without a marker counts as finished when every file it should hold loads (a stage made before
    markers); its marker is written then. Half a stage (an interrupted save) is not finished."""
    recorded = read_marker(stage_marker(b.run_dir, name))
    if recorded is not None:
        problem = files_problem(b.run_dir, recorded["files"])
        if problem:
            raise StageError(f"the {name} stage of {b.run_dir} is damaged: {problem}. Delete {b.run_dir / name} "
                             f"and {stage_marker(b.run_dir, name)} to make it again.")
        return True
    if files_problem(b.run_dir, STAGE_OUTPUTS[name].files) is not None:
        return False
    if b.main:
        b.mark(name)
    return True


def clip_stage(b: Build):
    """3. The CLIP, both halves trained together, contrastively."""
    from transformers import CLIPModel

    if reused(b, "text_encoder"):
        b.text_encoder = shipped_part("text_encoder")
        return
    if finished(b, "clip_words") or finished(b, "clip_rule"):
        return  # a later phase is done: that one is loaded (a run resumed from its finished stages)
    if finished(b, "clip"):
        b.clip = CLIPModel.from_pretrained(str(b.run_dir / "clip"), dtype=torch.float32).eval()
    else:
        seed_everything(b.cfg.seed + 1)
        b.clip = train_clip(b.cfg, b.plain_data, b.run_dir, b.progress, contrast=contrast_set(b))
        b.save(b.clip, "clip")
        if b.main:
            b.log.figure("clip_zero_shot", zero_shot_accuracy(b.clip, n=b.eval_n),
                         "CLIP zero-shot accuracy on fresh pictures")
            b.log.figure("text_encoder_word_sensitivity", word_sensitivity(text_half(b.clip)),
                         "text encoder: % change of its output per kind of word")


LATER_CLIP_PHASES = {"clip_refined": ("clip_words", "clip_rule"), "clip_words": ("clip_rule",), "clip_rule": ()}


def later_clip_phase(b: Build, folder_name: str, steps: int, seed_offset: int, train, label: str,
                     under_rule: bool = False) -> bool:
    """One of the CLIP's later phases: loaded from the run folder if it is done, else trained (if
    it has steps), saved, and its zero-shot accuracy logged. True when it trained now.
    under_rule: it reads the caption rule's captions and contrast pairs (the rule phase); the
    others read the rule-free set."""
    from transformers import CLIPModel

    if reused(b, "text_encoder"):
        return False
    if any(finished(b, name) for name in LATER_CLIP_PHASES[folder_name]):
        return False  # a later phase is done: that one is loaded
    if finished(b, folder_name):
        b.clip = CLIPModel.from_pretrained(str(b.run_dir / folder_name), dtype=torch.float32).eval()
        return False
    if steps <= 0:
        return False
    seed_everything(b.cfg.seed + seed_offset)
    data = b.clip_data if under_rule else b.plain_data
    b.clip = train(b.cfg, b.clip, data, b.run_dir, b.progress, contrast=contrast_set(b, with_concepts=under_rule))
    b.save(b.clip, folder_name)
    if b.main:
        b.log.figure(f"clip_zero_shot_after_{label}_phase", zero_shot_accuracy(b.clip, n=b.eval_n),
                     f"CLIP zero-shot accuracy after the {label} phase")
    return True


def clip_image_stage(b: Build):
    """3b. The CLIP's image encoder trains on, with the text encoder locked."""
    later_clip_phase(b, "clip_refined", b.cfg.clip_image_steps, 4, refine_image_encoder, "image")


def clip_words_stage(b: Build):
    """3c. Both halves train together again, on the contrast pairs too: the image encoder now
    sees shapes and positions, so the text encoder learns their words. Its text encoder
    becomes SD's, frozen."""
    if later_clip_phase(b, "clip_words", b.cfg.clip_words_steps, 5, teach_words, "words"):
        log_word_sensitivity(b, "words")
    if b.clip is not None:  # None when the rule phase is done: its CLIP is loaded next
        b.text_encoder = text_half(b.clip).eval().requires_grad_(False)


def log_word_sensitivity(b: Build, label: str):
    """Log how much the text encoder's output changes per kind of word, after a CLIP phase."""
    if b.main:
        b.log.figure(f"text_encoder_word_sensitivity_after_{label}_phase", word_sensitivity(text_half(b.clip)),
                     f"text encoder: % change of its output per kind of word, after the {label} phase")


def clip_rule_stage(b: Build):
    """3d. Under a caption rule: both halves train together once more, on the rule's captions
    (the class word "shape", captions without a colour; every second caption naming stars and
    pink, with clip_concept_words) and contrast pairs that include stars. Phases 1-3 read
    captions that always name the shape and colour, so the shape and colour words are learned
    first, from the full signal; this phase adds the class words on top. Its text encoder
    becomes SD's, frozen."""
    if not rule_phase_on(b.cfg) or reused(b, "text_encoder"):
        return  # the text encoder is the words phase's, or the shipped model's
    if later_clip_phase(b, "clip_rule", b.cfg.clip_rule_steps, 6, learn_class_words, "rule", under_rule=True):
        log_word_sensitivity(b, "rule")
    b.text_encoder = text_half(b.clip).eval().requires_grad_(False)


def text_half(clip):
    """The CLIP's text encoder as a CLIPTextModel (what the pipeline holds)."""
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder.eval()


def vae_figures(b: Build, vae) -> dict:
    """The VAE's round trip (`evaluate.vae_round_trip`, judged by the fixed judge): the share
    of each shape and size still recognised, and PSNRs on fresh shapes and held-out photos."""
    with torch.no_grad():
        report = vae_round_trip(vae.eval(), n_per_cell=4 if b.cfg.fast else 100, n_psnr=16 if b.cfg.fast else 256)
    return {key: report[key] for key in ("shape_kept", "psnr_fresh_shapes", "psnr_held_out_photo_crops")}


def vae_stage(b: Build):
    """2. The VAE; then scaling_factor = 1 / std of its latents."""
    from diffusers import AutoencoderKL


    if reused(b, "vae"):
        b.vae = shipped_part("vae")
        return
    if finished(b, "vae_decoder"):
        return  # the decoder phase is done: its VAE is loaded next
    if finished(b, "vae"):
        b.vae = AutoencoderKL.from_pretrained(str(b.run_dir / "vae")).eval()
        return
    seed_everything(b.cfg.seed + 2)
    b.vae = train_vae(b.cfg, b.photos, b.run_dir, b.progress)
    scale = latent_scaling_factor(b.vae, b.data["images"][: min(2048, len(b.data["images"]))])
    b.vae.register_to_config(scaling_factor=scale)
    b.save(b.vae, "vae")
    if b.main:
        b.log.figure("vae", {"scaling_factor": scale, **vae_figures(b, b.vae)}, "VAE")


def vae_decoder_stage(b: Build):
    """2b. Optional: the decoder alone trains on (latents, hence the U-Net, are unaffected)."""
    from diffusers import AutoencoderKL


    if reused(b, "vae"):
        return
    if finished(b, "vae_decoder"):
        b.vae = AutoencoderKL.from_pretrained(str(b.run_dir / "vae_decoder")).eval()
    elif b.cfg.vae_decoder_steps > 0:
        b.vae = finetune_decoder(b.cfg, b.vae, b.photos, b.run_dir, b.progress)
        # Stored in float16, as the pipeline ships it (half the size). The VAE in use from here
        # on holds the same rounded weights, so the U-Net learns from the shipped VAE's latents.
        b.save(b.vae.half(), "vae_decoder")
        b.vae = b.vae.float()
        if b.main:
            b.log.figure("vae_after_decoder_phase", vae_figures(b, b.vae), "VAE after the decoder phase")
    b.vae.requires_grad_(False)


def latents_stage(b: Build):
    """4. The training set, encoded once before the U-Net trains. The course's own stage caches
    each picture's latent distribution in the run folder, for later runs too; a learner's
    encode_latents gives the scaled latents, and runs again in every build (the function may
    have changed since), never cached."""
    if b.pieces.encode_latents is not None:
        b.latents = encode_training_set(b.pieces.encode_latents, b.vae, b.data["images"])
        return
    with b.accelerator.main_process_first():
        b.latents = load_or_cache_latents(b.vae, b.data["images"], b.run_dir / "latents.npz", b.progress,
                                          device=b.accelerator.device)


def unet_stage(b: Build):
    """5. The U-Net; always runs, so that a larger --unet-steps trains a finished run on."""
    seed_everything(b.cfg.seed + 3)
    b.unet, b.text_encoder = train_unet(b.cfg, b.latents, b.data["token_ids"], b.text_encoder, b.vae, b.tokenizer,
                        b.vae.config.scaling_factor, b.run_dir, b.progress, total_steps=b.cfg.unet_steps,
                        pieces=b.pieces)
    if b.main:
        b.unet.save_pretrained(str(b.run_dir / "unet"))  # for looking at: a later run trains on from its checkpoint
    b.log.figure("unet_steps", b.cfg.unet_steps)


def class_phase_on(cfg) -> bool:
    """Whether the build's U-Net has a class phase (`class_phase_stage`): a caption rule, and steps for it."""
    return caption_rules(cfg)[0] is not None and cfg.class_phase_steps > 0


def class_phase_stage(b: Build):
    """5b. Under a caption rule: the U-Net's class phase. The finished U-Net and the text encoder
    train on together, with a shorter EMA, on fresh pictures in which a star is called "shape"
    class_phase_held_out_weight times as often as each known shape (and a known shape is called
    "shape" class_phase_class_share of the time). Like the U-Net stage it always runs, so that a
    larger class_phase_steps trains a finished run on."""
    cfg = b.cfg
    if not class_phase_on(cfg):
        return
    folder = b.run_dir / CLASS_PHASE
    rule = shapes.CaptionRule(cfg.class_phase_class_share, cfg.colourless_share,
                              held_out_weight=cfg.class_phase_held_out_weight,
                              known_weights=cfg.class_phase_known_weights)
    with b.accelerator.main_process_first():
        data = build_rule_set(cfg.class_phase_pictures, cfg.captions_per_image, cfg.seed + 100, rule,
                              cfg.two_object_prob, cache=folder / "train_set.npz", progress=b.progress)
        latents = load_or_cache_latents(b.vae, data["images"], folder / "latents.npz", b.progress,
                                        device=b.accelerator.device)
    phase = replace(cfg, n_train=cfg.class_phase_pictures, class_share=cfg.class_phase_class_share,
                    unet_ema_decay=cfg.class_phase_ema_decay)
    seed_everything(cfg.seed + 8)
    b.unet, b.text_encoder = train_unet(phase, latents, data["token_ids"], b.text_encoder, b.vae, b.tokenizer,
                                        b.vae.config.scaling_factor, folder, b.progress,
                                        total_steps=cfg.class_phase_steps, init_unet=b.unet,
                                        record=cfg.pick("class_phase_held_out_weight", "class_phase_known_weights",
                                                        "unet_steps"))
    if b.main:
        b.unet.save_pretrained(str(folder / "unet"))  # for looking at, as the U-Net stage's
    b.log.figure("class_phase_steps", cfg.class_phase_steps)


def classifier_stage(b: Build):
    """6. A shape/colour classifier trained by the judge's recipe (`training.judge`), kept in the run folder
    (the fixed judge in the package is never replaced)."""
    cfg = b.cfg
    if cfg.classifier_steps <= 0:
        return  # none of its own (the lab build): the fixed judge measures the model
    if any(finished(b, name) for name in (CLASSIFIER_FILE, "classifier.safetensors")):
        return  # "classifier.safetensors": its name in runs made before
    classifier = train_classifier(cfg.classifier_steps, cfg.classifier_batch, cfg.classifier_n_train,
                                  seed=cfg.seed + 7, progress=b.progress, checkpoint=b.run_dir / "classifier_ckpt.pt",
                                  mixed_precision=cfg.mixed_precision)
    if b.main:
        save_classifier(classifier, b.run_dir / CLASSIFIER_FILE)
        b.mark(CLASSIFIER_FILE)
        b.log.figure("classifier_accuracy", classifier_accuracy(n=b.eval_n, classifier=classifier))


def ship_stage(b: Build):
    """7. The pipeline folder (written in the run folder, then moved to --out), and the CLIP's
    image half in the run folder (benchmarks/quality.py --run finds it there)."""
    if not b.main:
        return
    save_pipeline(b.unet, b.vae, b.text_encoder, b.tokenizer, b.out, b.run_dir)
    if b.clip is not None:  # None when the text encoder is the shipped model's
        save_clip_extras(b.clip, b.run_dir / "tiny-clip")
    save_samples(b.unet, b.vae, b.text_encoder, b.tokenizer, b.run_dir / "samples" / "final.png")


STAGES = (("data", data_stage), ("vae", vae_stage), ("vae_decoder", vae_decoder_stage), ("clip", clip_stage),
          ("clip_image", clip_image_stage), ("clip_words", clip_words_stage), ("clip_rule", clip_rule_stage),
          ("latents", latents_stage), ("unet", unet_stage), ("class_phase", class_phase_stage),
          ("classifier", classifier_stage), ("ship", ship_stage))


def main(argv=None, *, training_loss=None, ema_update=None, encode_latents=None):
    """The build, with the command line's arguments (argv; default sys.argv's). The keywords take a
    learner's pieces of the build (`pieces.py`); each one left None is the course's own."""
    pieces = BuildPieces(training_loss, ema_update, encode_latents)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="pipeline folder to write (default: <run>/tiny-sd)")
    parser.add_argument("--run", default=None, help="run folder for caches, checkpoints, samples")
    parser.add_argument("--overwrite", action="store_true",
                        help="write the pipeline over --out even if it holds files this build did not write")
    parser.add_argument("--fast", action="store_true", help="miniature build (also: SDCOURSE_FAST=1)")
    parser.add_argument("--size", choices=config_mod.SIZES, default="full",
                        help="full: every network trained (hours); lab: the shipped model's VAE and text "
                             "encoder, and a smaller U-Net trained for minutes (config.lab_config)")
    parser.add_argument("--unet-steps", type=int, default=None, help="override the U-Net step count")
    parser.add_argument("--vae-decoder-steps", type=int, default=None, help="override the decoder-only steps")
    parser.add_argument("--mixed-precision", choices=PRECISIONS, default="no",
                        help="half-precision arithmetic for training: bf16 or fp16 on GPUs; bf16 also "
                             "on CPUs with AVX-512 BF16, where it is about 1.7x faster")
    parser.add_argument("--stop-after", choices=[name for name, _ in STAGES], default=None,
                        help="run the stages up to this one and stop (e.g. vae_decoder: the VAE alone)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="settings",
                        help="change one setting of config.BuildConfig for this build (repeatable), such as "
                             "--set text_encoder_lr_scale=1.0; a resumed run refuses a changed one by name")
    args = parser.parse_args(argv)

    fast = args.fast or fast_mode_requested()
    overrides = {"threads": args.threads, "mixed_precision": args.mixed_precision}
    try:
        overrides.update(config_mod.setting_from_text(text) for text in args.settings)
    except ValueError as error:
        parser.error(str(error))
    if args.unet_steps:
        overrides["unet_steps"] = args.unet_steps
    if args.vae_decoder_steps is not None:
        overrides["vae_decoder_steps"] = args.vae_decoder_steps
    cfg = config_mod.config_of_size(args.size, fast, **overrides)
    run_dir = Path(args.run or ("runs/tiny-sd-fast" if fast else "runs/tiny-sd") + ("-lab" if args.size == "lab" else ""))
    out = Path(args.out) if args.out else run_dir / "tiny-sd"
    if run_dir.resolve() == out.resolve() or out.resolve() in run_dir.resolve().parents:
        parser.error(f"--run {run_dir} must not be --out {out} or inside it: writing the pipeline replaces --out")
    previous = read_json(run_dir / "config.json", "run settings") if (run_dir / "config.json").exists() else None
    if previous is not None and previous.get("size", "full") != cfg.size:  # runs made before sizes are full ones
        parser.error(f"--size {cfg.size}: the run folder {run_dir} holds a --size {previous.get('size', 'full')} "
                     f"build; resume it with --size {previous.get('size', 'full')}, or give another --run")
    check_run_folder(run_dir, cfg, previous)
    try:
        if args.stop_after in (None, "ship"):  # it will write --out: claimed before hours of training
            claim_pipeline_folder(out, run_dir, args.overwrite)
    except FileExistsError as error:
        parser.error(str(error))
    run_dir.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    b = Build(cfg, run_dir, out, progress=not args.quiet, pieces=pieces)
    if b.main:
        write_json(run_dir / "config.json", cfg.to_dict())
        pieces.announce()
    started = time.time()
    for name, stage in STAGES:
        t = time.time()
        stage(b)
        b.accelerator.wait_for_everyone()
        b.log.stage(name, time.time() - t)
        if name == args.stop_after:
            break
    b.accelerator.end_training()  # several processes: they are done working together
    if not b.main:
        return
    if args.stop_after not in (None, "ship"):
        print(f"stopped after the {args.stop_after} stage; run again without --stop-after to go on")
        return
    b.log.figure("pipeline_mb", round(folder_size_mb(out), 2))
    b.log.data["total_minutes_this_invocation"] = round((time.time() - started) / 60, 1)
    b.log.save()
    print(json.dumps(b.log.data, indent=2))
    print(f"pipeline written to {out} ({folder_size_mb(out):.1f} MB)")


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, StageError) as error:  # a message to act on; the traceback would not help
        raise SystemExit(f"error: {error}") from None
