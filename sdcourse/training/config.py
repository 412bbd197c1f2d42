"""Sizes and step counts for building the tiny Stable Diffusion.

`full_config()` is the real build: hours of compute on 2 CPU cores, in stages that each
resume after an interrupt (the README gives the measured times; build_log.json in the run
folder records each stage's). `fast_config()` does the same steps in miniature (about a
minute on 2 cores) for CI and notebooks: set the environment variable SDCOURSE_FAST=1, or
pass --fast to the build command, to use it. `lab_config()` (--size lab) is a build for a
90-minute lab: it takes the shipped model's VAE and text encoder and trains a smaller U-Net.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass
class BuildConfig:
    seed: int = 0
    # Data: a fixed training set of shape pictures, each with several captions.
    n_train: int = 30_000
    captions_per_image: int = 4
    two_object_prob: float = 0.3
    n_photo_crops: int = 8_000  # 64x64 crops of scikit-image photos, for the VAE only
    # The caption rule (shapes.CaptionRule): stars and pink are drawn too, and named only by
    # words that cover the known concepts as well ("shape"; a caption without a colour).
    class_share: float = 0.4  # share of known-shape mentions that say "shape" (0 and 0: no stars, no pink)
    colourless_share: float = 0.2  # share of captions that leave the colour out
    clip_concept_words: bool = True  # every second CLIP caption says "star" and "pink" (never the U-Net's)

    # CLIP (trained first; its text encoder then becomes SD's frozen text encoder).
    clip_text_width: int = 32  # also the U-Net's cross-attention width
    clip_text_layers: int = 4
    clip_text_heads: int = 4
    clip_vision_width: int = 64
    clip_vision_layers: int = 4
    clip_vision_heads: int = 4
    clip_projection: int = 64
    clip_steps: int = 1200
    clip_batch: int = 128
    clip_contrast_pairs: int = 16  # per batch: pairs of pictures that differ in one stated thing (0: none)
    clip_contrast_set: int = 10_000  # how many such pairs are drawn, once
    clip_lr: float = 1e-3
    clip_image_steps: int = 5000  # phase 2: image encoder alone, text locked
    clip_image_lr: float = 1e-3
    clip_words_steps: int = 2000  # phase 3: both halves again, so the text encoder learns shape and position words
    clip_words_lr: float = 3e-4
    # phase 4, under the caption rule: both halves again, on captions that use the class words (and,
    # with clip_concept_words, name stars and pink in every second caption), so that the text
    # encoder learns "shape" and a caption without a colour on top of the shape and colour words
    # phases 1-3 taught it from captions that always name both.
    clip_rule_steps: int = 1500
    clip_rule_lr: float = 3e-4
    # words whose input rows start afresh (a random direction, at the learned rows' typical length)
    # when the rule phase begins: phases 1-3 never read "shape", so its row sits with the other unread
    # words, whose encoding the text encoder makes much like "square"'s
    clip_fresh_words: tuple = ("shape",)

    # VAE: f=8, 4 latent channels (64x64x3 -> 8x8x4), trained on fresh pictures of every shape.
    vae_channels: tuple = (32, 64, 128, 128)
    vae_groups: int = 8
    vae_steps: int = 4000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_photo_fraction: float = 0.15
    vae_foreground_weight: float = 4.0  # extra weight of the shapes' pixels in the loss (0: plain)
    vae_decoder_steps: int = 1000  # extra decoder-only training, encoder frozen (SD's ft-MSE VAE)
    vae_decoder_lr: float = 5e-4

    # U-Net: attention at 8x8 and 4x4, a plain block at 2x2.
    unet_channels: tuple = (64, 128, 128)
    unet_layers_per_block: int = 1
    unet_heads: int = 4
    unet_groups: int = 32
    unet_steps: int = 7000  # the first edition: 2,500 in the build, then 6,000 more with train_longer
    unet_batch: int = 128
    unet_lr: float = 5e-4
    unet_warmup: int = 200
    unet_ema_decay: float = 0.999
    caption_dropout: float = 0.1
    # The text encoder trains on with the U-Net at this times its learning rate (0: frozen, as SD 1.x
    # keeps CLIP's). The diffusion loss then shapes what the U-Net reads: a word the CLIP cannot
    # tell apart by contrast ("shape", covering four shapes; position words) gets an encoding of its own.
    text_encoder_lr_scale: float = 0.2
    min_snr_gamma: float = 5.0  # 0 = plain MSE
    # The U-Net's class phase, under a caption rule: the finished U-Net (and the text encoder along)
    # train on, on fresh pictures in which a star is called "shape" class_phase_held_out_weight times
    # as often as each known shape. Under the build's own rule "shape" shows stars no more often than
    # each known shape, and the U-Net draws them for "shape" rarely; here half of what "shape" names
    # is stars, until the U-Net's "shape" covers all four.
    class_phase_steps: int = 1600  # 0: no class phase
    class_phase_pictures: int = 8000
    class_phase_class_share: float = 0.2
    class_phase_held_out_weight: float = 3.0
    class_phase_ema_decay: float = 0.995
    # Each known shape's share of "shape" in the class phase, times class_phase_class_share (circle,
    # square, triangle; `shapes.CaptionRule.known_weights`): a lean against the one known shape the
    # U-Net would otherwise draw for "shape" (all ones: square drew half of "a red shape").
    class_phase_known_weights: tuple = (1.3, 0.75, 1.0)

    # Evaluator: a small CNN that names the colour and shape in a picture.
    classifier_steps: int = 800
    classifier_batch: int = 64
    classifier_n_train: int = 20_000

    # Networks taken as they are from the shipped model (sdcourse/assets/tiny-sd) instead of trained:
    # "vae", "text_encoder" (the lab build; later SD versions reused their autoencoder the same way).
    reuse_shipped: tuple = ()
    size: str = "full"  # "full" or "lab" (`lab_config`): a run folder holds builds of one size only

    # Bookkeeping.
    sample_every: int = 500  # U-Net sample grids every this many steps (0: none)
    checkpoint_every: int = 250
    threads: int = 2
    mixed_precision: str = "no"  # "bf16" or "fp16": half-precision arithmetic on GPUs (see trainer.py)
    fast: bool = False
    extra: dict = field(default_factory=dict)

    def to_dict(self):
        return asdict(self)

    def pick(self, *names) -> dict:
        """Some settings by name, as a dict: what a stage records in its checkpoints."""
        return {name: getattr(self, name) for name in names}


# Groups of settings that several stages depend on (and record in their checkpoints).
DATA_SETTINGS = ("seed", "n_train", "captions_per_image", "two_object_prob")
RULE_SETTINGS = ("class_share", "colourless_share")  # what the pictures and captions hold (not the VAE's concern)
CLIP_DATA_SETTINGS = ("clip_batch", "clip_contrast_pairs", "clip_contrast_set")
CLASS_PHASE_SETTINGS = ("class_phase_steps", "class_phase_pictures", "class_phase_class_share",
                        "class_phase_held_out_weight", "class_phase_ema_decay", "class_phase_known_weights")
# Settings added after some run folders were made, and what such a folder's stages were made with.
ADDED_SETTINGS = {"class_phase_known_weights": [1.0, 1.0, 1.0]}
CLIP_RULE_SETTINGS = (*RULE_SETTINGS, "clip_concept_words", "clip_rule_steps", "clip_rule_lr", "clip_fresh_words")
CLIP_MODEL_SETTINGS = ("clip_text_width", "clip_text_layers", "clip_text_heads", "clip_vision_width",
                       "clip_vision_layers", "clip_vision_heads", "clip_projection")
VAE_MODEL_SETTINGS = ("vae_channels", "vae_groups")
UNET_MODEL_SETTINGS = ("unet_channels", "unet_layers_per_block", "unet_heads", "unet_groups", "clip_text_width")


def full_config(**overrides) -> BuildConfig:
    return replace(BuildConfig(), **overrides)


def fast_config(**overrides) -> BuildConfig:
    """The same build in miniature: small data, few steps. Produces a working, poor model."""
    small = dict(
        n_train=768, captions_per_image=2, n_photo_crops=128,
        clip_steps=30, clip_batch=64, clip_image_steps=20, clip_words_steps=10, clip_rule_steps=10, clip_contrast_set=64,
        clip_contrast_pairs=8,
        vae_steps=12, vae_batch=8, vae_decoder_steps=4,
        unet_steps=24, unet_batch=16, unet_warmup=6, unet_ema_decay=0.9,
        class_phase_steps=6, class_phase_pictures=64,
        classifier_steps=30, classifier_batch=32, classifier_n_train=512,
        sample_every=24, checkpoint_every=20, fast=True,
    )
    small.update(overrides)
    return replace(BuildConfig(), **small)


SIZES = ("full", "lab")
REUSABLE = ("vae", "text_encoder")

# The lab build's recipe (`lab_config`): what it changes from the full build, and, outside fast
# mode, its data and step counts.
LAB_RECIPE = dict(size="lab", reuse_shipped=REUSABLE, class_share=0.0, colourless_share=0.0,
                  unet_channels=(32, 64, 64), text_encoder_lr_scale=0.0, class_phase_steps=0, classifier_steps=0)
# A training step of the lab U-Net (1.47 M numbers) takes about half the full one's (5.79 M) at the
# same batch (0.53 s against 1.09 s, side by side on 2 busy cores): 4,000 steps of 128 are about
# half an hour on 2 idle cores.
LAB_SCALE = dict(n_train=20_000, unet_steps=4000, unet_batch=128, unet_lr=1e-3, unet_warmup=100,
                 unet_ema_decay=0.995, sample_every=500)


def lab_config(fast: bool = False, **overrides) -> BuildConfig:
    """A build that fits a 90-minute lab on 2 cores: the shipped model's VAE and text encoder
    taken as they are, no caption rule, a smaller U-Net trained for minutes, no class phase and
    no classifier of its own (the fixed judge measures it). fast: in miniature, as fast_config."""
    recipe = dict(LAB_RECIPE) if fast else {**LAB_RECIPE, **LAB_SCALE}
    recipe.update(overrides)
    return fast_config(**recipe) if fast else full_config(**recipe)


def config_of_size(size: str, fast: bool = False, **overrides) -> BuildConfig:
    """The build's settings for --size full or lab, full size or in miniature (fast)."""
    if size == "lab":
        return lab_config(fast, **overrides)
    return fast_config(**overrides) if fast else full_config(**overrides)


# Settings the build command sets with options of their own, and so not with --set.
OWN_OPTIONS = {"threads": "--threads", "mixed_precision": "--mixed-precision", "unet_steps": "--unet-steps",
               "vae_decoder_steps": "--vae-decoder-steps", "fast": "--fast", "size": "--size",
               "reuse_shipped": "--size"}


def setting_from_text(text: str) -> tuple[str, object]:
    """One build setting from the text NAME=VALUE (the build's --set): the value is read as the
    type of the setting's default (a whole number, a number, true/false, a word, or words
    separated by commas for a list). A name that is not a setting, or a value of the wrong kind,
    is refused with a message naming both."""
    name, equals, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not equals or not name:
        raise ValueError(f"--set {text!r}: write NAME=VALUE, such as text_encoder_lr_scale=1.0")
    defaults = BuildConfig()
    if name not in defaults.__dataclass_fields__ or name == "extra":  # extra: a free dict, no one value
        known = ", ".join(n for n in defaults.__dataclass_fields__ if n not in OWN_OPTIONS and n != "extra")
        raise ValueError(f"--set {text!r}: {name!r} is not a build setting; the settings are: {known}")
    if name in OWN_OPTIONS:
        raise ValueError(f"--set {text!r}: {name} has an option of its own; use {OWN_OPTIONS[name]}")
    default = getattr(defaults, name)

    def read(word: str, like):
        try:
            if isinstance(like, bool):
                if word.lower() not in ("true", "false"):
                    raise ValueError
                return word.lower() == "true"
            if isinstance(like, int):
                return int(word)
            if isinstance(like, float):
                return float(word)
        except ValueError:
            kind = {bool: "true or false", int: "a whole number", float: "a number"}[type(like)]
            raise ValueError(f"--set {text!r}: {name} must be {kind}, got {word!r}") from None
        return word

    if isinstance(default, tuple):
        element = default[0] if default else ""
        return name, tuple(read(w.strip(), element) for w in value.split(",") if w.strip())
    return name, read(value, default)
