"""The small LLaMA-style decoder every benchmark uses (58.5M LM parameters at a 32k vocabulary; width 512,
8 layers): big enough for realistic matmul shapes on a CPU, small enough to run in minutes. ``LLAMA_SIZES`` adds
the shapes of LLaMA-7B and of a ~1B decoder, and ``VISION_LAYERS`` the ViT depth for each (CLIP ViT-L/14's 24 for
them), for measuring on a GPU (random weights: the speed of a shape, not the answers of a model)."""

SMALL_LLAMA = dict(
    model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8
)

LLAMA_SIZES = {
    "small": SMALL_LLAMA,
    "1b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16
    ),
    "7b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32
    ),
}
VISION_LAYERS = {"small": 1, "1b": 24, "7b": 24}
