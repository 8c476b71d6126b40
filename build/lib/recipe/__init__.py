"""recipe: the Llama-2-7B-32K-Instruct distill-and-fine-tune recipe as reproducible, sweepable experiments."""

__version__ = "0.1.0"
