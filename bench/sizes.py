"""The small LLaMA-style decoder every benchmark uses (58.5M LM parameters at a 32k vocabulary; width 512,
8 layers): big enough for realistic matmul shapes on a CPU, small enough to run in minutes."""

SMALL_LLAMA = dict(
    model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8
)
