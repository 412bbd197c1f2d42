"""Stable Diffusion pipelines: one import for both ways the course makes pictures.

- `sdcourse.loading`: `load_pipeline` (the embedded tiny model or a real SD 1.x/2.x folder,
  as a diffusers pipeline, checked before it loads) and `generate` (pictures from it, seeded).
- `sdcourse.from_scratch`: `TextToImage`, `ImageToImage` and `Inpaint`, the same pipelines
  written with the course's own tokenizer, text encoder, U-Net, VAE and samplers.
- `sdcourse.request_checks`: what every request for pictures must be (prompts, sizes, memory).
- `sdcourse.controlnet`: the ControlNet a TextToImage may hold (`ControlNet`, `load_controlnet`).

    >>> from sdcourse.pipeline import TextToImage, generate, load_pipeline
"""

from sdcourse.controlnet import ControlNet, load_controlnet  # noqa: F401
from sdcourse.from_scratch import (  # noqa: F401
    FALLBACK_SAMPLER,
    TWIN_SAMPLERS,
    ImageToImage,
    Inpaint,
    StableDiffusion,
    TextToImage,
    add_noise,
    first_step,
    image_to_tensor,
    make_sampler_for,
    mask_to_tensor,
    repeat_to,
    tensor_to_images,
)
from sdcourse.loading import (  # noqa: F401
    EMBEDDED_MODEL,
    MODEL_ENV_VAR,
    DamagedWeightsError,
    ModelNotAvailableError,
    check_device,
    generate,
    load_pipeline,
    load_tokenizer_of,
    resolve_model,
    validate_model_folder,
)
from sdcourse.request_checks import (  # noqa: F401
    BYTES_PER_PIXEL,
    check_generator,
    check_images,
    check_memory,
    check_prompts,
    check_size,
    check_strength,
    memory_limit_bytes,
)
