"""mmgpt: MultiModal-GPT (OpenFlamingo + LoRA instruction tuning) for multi-turn vision-language dialogue."""

__version__ = "0.1.0"
