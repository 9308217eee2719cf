"""Synthetic scenes with exact object masks, their captions, and (later) the small offline CLIP.

    from clipviz.synth import scene_from_index, caption_for, all_class_prompts
    scene = scene_from_index(seed=0, index=5)  # image uint8 [224, 224, 3], masks bool [K, 224, 224]
    text = caption_for(scene, rng=5)            # "a photo of a red star and a small white ring"
"""

from .scenes import (
    BACKGROUNDS,
    COLOURS,
    IMAGE_SIZE,
    MAX_OBJECTS,
    MIN_VISIBLE,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    all_classes,
    make_scene,
    make_single_object_scene,
    object_mask,
    scene_from_index,
)
from .captions import all_class_prompts, caption_for, object_prompt, position_phrase
