"""Model fixtures: the real bundled generator and embedder, and a tiny Llama for fast tests.

The GGUF conversion (~20 s) runs once per session; set LOGMEM_MODEL_CACHE to a folder to keep the
converted copy between runs.
"""

from __future__ import annotations

import os

# Never reach a model hub, even by accident; set before transformers is imported by these tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path

import pytest
import torch
from logmem.model.embedding import SentenceTransformerEmbedder, default_embedder
from logmem.model.loading import bundled_gguf_path, convert_gguf, load_generator
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase


@pytest.fixture(scope="session")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """logmem home holding the converted generator: $LOGMEM_MODEL_CACHE if set, else a session temp dir."""
    cache = os.environ.get("LOGMEM_MODEL_CACHE")
    if cache:
        path = Path(cache).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("logmem-home")


@pytest.fixture(scope="session")
def smollm_folder(model_home: Path) -> Path:
    """The bundled SmolLM2-135M-Instruct converted to a safetensors folder (converted once)."""
    return convert_gguf(bundled_gguf_path(), home=model_home)


@pytest.fixture(scope="session")
def smollm(smollm_folder: Path, model_home: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The real bundled generator in float32 on CPU, with its tokenizer."""
    return load_generator(home=model_home)


@pytest.fixture(scope="session")
def tiny_lm(smollm: tuple[PreTrainedModel, PreTrainedTokenizerBase],
            ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A 2-layer random Llama (hidden 64) over the real SmolLM2 tokenizer: real tokens, fast forward."""
    _, tokenizer = smollm
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):  # seeded locally, the global RNG is left alone
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    """The bundled all-MiniLM-L6-v2 embedder (loads on first encode)."""
    return default_embedder()
