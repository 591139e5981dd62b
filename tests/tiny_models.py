"""Tiny random-weight checkpoints of real architectures, built offline for tests."""

from __future__ import annotations

from pathlib import Path

QWEN2VL_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


GLM4V_SPECIAL_TOKENS = [
    "<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|begin_of_image|>",
    "<|end_of_image|>", "<|image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|video|>",
]  # fmt: skip

GLM4V_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

VLM_ARCHS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v")


def _tiny_tokenizer(special: list[str], eos: str, chat_template: str):  # -> PreTrainedTokenizerFast
    """A byte-level BPE of 400 tokens trained on easy-VQA's questions and answers, with `special` tokens."""
    import easy_vqa
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    questions = easy_vqa.get_train_questions()[0] + easy_vqa.get_test_questions()[0]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(questions + easy_vqa.get_answers(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos, pad_token="<|endoftext|>",
                                   chat_template=chat_template)


def build_tiny_qwen2vl(path: Path, seed: int = 0, arch: str = "qwen2_vl") -> Path:
    """Build a tiny random VLM folder at `path`: Qwen2-VL (default), Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE (8 experts,
    2 per token) or GLM-4.1V (`arch` one of `VLM_ARCHS`), hidden size 64, two layers of each tower.

    A 64x64 image becomes 4 image tokens. Without torchvision, load it with `AutoProcessor` after evalfleet's
    `without_video_processor()` (its workers do that themselves).
    """
    import torch
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    glm = arch == "glm4v"
    tokenizer = (_tiny_tokenizer(GLM4V_SPECIAL_TOKENS, "<|user|>", GLM4V_CHAT_TEMPLATE) if glm
                 else _tiny_tokenizer(QWEN2VL_SPECIAL_TOKENS, "<|im_end|>", QWEN2VL_CHAT_TEMPLATE))
    ids = tokenizer.get_vocab()
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]}  # head_dim 64
    text = dict(vocab_size=len(ids), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=1024, rope_parameters=rope,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=ids["<|endoftext|>"])
    vision: dict = dict(depth=2, hidden_size=64, num_heads=1, out_hidden_size=64, intermediate_size=128)
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"]) \
        if not glm else {}
    patch = 14
    if arch == "qwen2_vl":
        name, text["bos_token_id"] = "Qwen2VL", ids["<|endoftext|>"]
        vision = dict(depth=2, embed_dim=64, hidden_size=64, num_heads=1, mlp_ratio=2)
    elif arch == "qwen2_5_vl":
        name, text["bos_token_id"] = "Qwen2_5_VL", ids["<|endoftext|>"]
        vision.update(fullatt_block_indexes=[1], window_size=56)
    elif arch in ("qwen3_vl", "qwen3_vl_moe"):
        name, patch = ("Qwen3VL", 16) if arch == "qwen3_vl" else ("Qwen3VLMoe", 16)
        if arch == "qwen3_vl_moe":
            text.update(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
        text["head_dim"] = 64
        rope.update(mrope_section=[8, 12, 12], mrope_interleaved=True)
        vision.update(patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0])
    else:
        name = "Glm4v"
        text["rope_parameters"] = {**rope, "partial_rotary_factor": 0.5, "mrope_section": [4, 6, 6]}
        vision.update(image_size=56, patch_size=14)
        tokens = dict(image_token_id=ids["<|image|>"], video_token_id=ids["<|video|>"],
                      image_start_token_id=ids["<|begin_of_image|>"], image_end_token_id=ids["<|end_of_image|>"],
                      video_start_token_id=ids["<|begin_of_video|>"], video_end_token_id=ids["<|end_of_video|>"])
    config = getattr(transformers, f"{name}Config")(text_config=text, vision_config=vision, **tokens)
    torch.manual_seed(seed)
    getattr(transformers, f"{name}ForConditionalGeneration")(config).save_pretrained(path)
    tokenizer.save_pretrained(path)  # processor.save_pretrained needs torchvision: save parts separately
    side = patch * 2 * 2  # 2x2 merged tokens of 2x2 patches
    if glm:
        from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

        pre = Glm4vImageProcessorPil(size={"shortest_edge": side * side, "longest_edge": side * side})
    else:
        pre = Qwen2VLImageProcessorPil(min_pixels=side * side, max_pixels=side * side, patch_size=patch)
    pre.save_pretrained(path)
    return path


def build_tiny_moe(path: Path, seed: int = 0) -> Path:
    """Build a tiny random Qwen3-MoE causal LM (the architecture of Qwen3-30B-A3B: 8 experts, 2 per token, every
    layer sparse) with the tiny Qwen tokenizer at `path`."""
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    tokenizer = _tiny_tokenizer(QWEN2VL_SPECIAL_TOKENS, "<|im_end|>", QWEN2VL_CHAT_TEMPLATE)
    config = Qwen3MoeConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_experts=8,
                            num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    Qwen3MoeForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


PIX2PIX_SHAPES = {
    # image size, text encoder (hidden, intermediate, layers, heads, max tokens), UNet (blocks, layers per block,
    # cross-attention blocks), VAE (blocks, layers per block, norm groups)
    "tiny": (64, (32, 64, 2, 2, 16), ((32, 64), 1, 1), ((8, 16, 32, 32), 1, 8)),
    "sd15": (512, (768, 3072, 12, 12, 77), ((320, 640, 1280, 1280), 2, 3), ((128, 256, 512, 512), 2, 32)),
}


def build_pix2pix(path: Path, seed: int = 0, shape: str = "tiny") -> Path:
    """Build a random StableDiffusionInstructPix2PixPipeline folder at `path`: `tiny` for tests (64x64 images ->
    8x8 latents), or `sd15` with the shapes of InstructPix2Pix (Stable Diffusion 1.5) for GPU benchmarks."""
    import json

    import easy_vqa
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<|startoftext|>", "<|endoftext|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, end_of_word_suffix="</w>", show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(easy_vqa.get_train_questions()[0], trainer)
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(bpe.get_vocab()) - set(specials)))}  # trainer ids vary
    size, text, unet_shape, vae_shape = PIX2PIX_SHAPES[shape]
    hidden, inter, layers, heads, max_tokens = text
    (unet_blocks, unet_layers, n_cross), (vae_blocks, vae_layers, groups) = unet_shape, vae_shape
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_tokens)  # CLIP's normalizer, bos/eos
    text_config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=max_tokens, projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    plain = len(unet_blocks) - n_cross
    unet = UNet2DConditionModel(
        sample_size=size // 8, in_channels=8, out_channels=4, layers_per_block=unet_layers,
        block_out_channels=unet_blocks, cross_attention_dim=hidden, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * n_cross + ("DownBlock2D",) * plain,
        up_block_types=("UpBlock2D",) * plain + ("CrossAttnUpBlock2D",) * n_cross,
    )
    vae = AutoencoderKL(  # 4 blocks -> vae_scale_factor 8, like real SD
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_blocks, layers_per_block=vae_layers,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=groups,
        sample_size=size,
    )
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=CLIPTextModel(text_config), tokenizer=tokenizer, unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path
