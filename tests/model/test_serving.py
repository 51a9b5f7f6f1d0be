"""AdapterPool: each request answered by its own LoRA adapter over one shared base, checked against
separately loaded reference models."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch
from logmem.memory.errors import AdapterError
from logmem.model.loading import ModelNotFoundError
from logmem.model.serving import AdapterPool
from peft import LoraConfig, PeftModel, get_peft_model

# peft warns when a name could make it re-initialize an adapter's weights on load; here that is a failure
pytestmark = pytest.mark.filterwarnings("error:Adapter name .* should not be contained in the prefix")

PROMPT = "The capital of France is"
SEEDS = {"a": 1, "b": 2}


@pytest.fixture(scope="module")
def adapters(tiny_lm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """Two random LoRA adapters over the tiny Llama, saved to disk: version -> folder."""
    root = tmp_path_factory.mktemp("adapters")
    paths = {}
    for version, seed in SEEDS.items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lora = get_peft_model(copy.deepcopy(tiny_lm[0]), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                        init_lora_weights=False))
        lora.save_pretrained(root / version)
        paths[version] = root / version
    return paths


@pytest.fixture(scope="module")
def inputs(tiny_lm) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return dict(tiny_lm[1](PROMPT, return_tensors="pt"))


@pytest.fixture(scope="module")
def references(tiny_lm, adapters: dict[str, Path], inputs: dict[str, torch.Tensor],  # type: ignore[no-untyped-def]
               ) -> dict[str | None, tuple[torch.Tensor, torch.Tensor]]:
    """(generated ids, prompt logits) of each adapter loaded alone, and of the untouched base (None)."""
    models = {version: PeftModel.from_pretrained(copy.deepcopy(tiny_lm[0]), str(path)).eval()
              for version, path in adapters.items()}
    models[None] = copy.deepcopy(tiny_lm[0])  # type: ignore[index]
    with torch.no_grad():
        return {version: (_generate(model, inputs), model(**inputs).logits) for version, model in models.items()}


@pytest.fixture
def pool(tiny_lm) -> AdapterPool:  # type: ignore[no-untyped-def]
    return AdapterPool(copy.deepcopy(tiny_lm[0]))  # the session model is shared: never wrap it in place


def _generate(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.generate(**inputs, max_new_tokens=8, do_sample=False)  # type: ignore[operator]


def _served(pool: AdapterPool, version: str | None, adapters: dict[str, Path],
            inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with pool.using(version, adapters.get(version) if version else None) as model:
        return _generate(model, inputs)


def test_references_differ(references) -> None:  # type: ignore[no-untyped-def]
    (ids_a, logits_a), (ids_b, logits_b), (ids_base, _) = references["a"], references["b"], references[None]
    assert not torch.allclose(logits_a, logits_b, atol=1e-3)
    assert not torch.equal(ids_a, ids_b), "seeds must make the two adapters answer differently"
    assert not torch.equal(ids_a, ids_base) or not torch.equal(ids_b, ids_base)


def test_interleaved_tenants_get_their_own_adapter(pool: AdapterPool, adapters: dict[str, Path],
                                                   inputs: dict[str, torch.Tensor], references) -> None:  # type: ignore[no-untyped-def]
    for version in ["a", "b", None, "a", "b", None]:
        assert torch.equal(_served(pool, version, adapters, inputs), references[version][0]), version
    assert pool.loaded == ["a", "b"]


def test_base_stays_base_after_adapters_load(pool: AdapterPool, adapters: dict[str, Path],
                                             inputs: dict[str, torch.Tensor], references) -> None:  # type: ignore[no-untyped-def]
    for version in ["a", "b"]:
        _served(pool, version, adapters, inputs)
    with pool.using(None, None) as model:
        assert not model.training and not torch.is_grad_enabled()
        torch.testing.assert_close(model(**inputs).logits, references[None][1], rtol=0, atol=1e-6)
    for version in ["a", "b"]:  # evicting the last adapter unloads peft's layers: the plain model again
        pool.evict(version)
    assert pool.loaded == []
    with pool.using(None, None) as model:
        assert not isinstance(model, PeftModel)
        torch.testing.assert_close(model(**inputs).logits, references[None][1], rtol=0, atol=1e-6)


def test_least_recently_used_adapter_is_evicted(tiny_lm, adapters: dict[str, Path],  # type: ignore[no-untyped-def]
                                                inputs: dict[str, torch.Tensor], references) -> None:
    pool = AdapterPool(copy.deepcopy(tiny_lm[0]), max_loaded=1)
    _served(pool, "a", adapters, inputs)
    assert torch.equal(_served(pool, "b", adapters, inputs), references["b"][0])
    assert pool.loaded == ["b"]
    assert torch.equal(_served(pool, "a", adapters, inputs), references["a"][0])
    assert pool.loaded == ["a"]


def test_versions_with_dots_are_served(pool: AdapterPool, adapters: dict[str, Path],
                                       inputs: dict[str, torch.Tensor], references) -> None:  # type: ignore[no-untyped-def]
    for version, path in [("v1.2", adapters["a"]), ("v1_2", adapters["b"])]:
        with pool.using(version, path) as model:
            assert torch.equal(_generate(model, inputs), references[path.name][0])
    assert pool.loaded == ["v1.2", "v1_2"]


def test_missing_adapter_folder_names_the_path(pool: AdapterPool, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelNotFoundError, match=str(missing)), pool.using("v9", missing):
        pass
    assert pool.loaded == []
    with pytest.raises(AdapterError, match="'v9' is not loaded"), pool.using("v9", None):
        pass


def test_an_adapter_in_use_is_not_switched_or_evicted(pool: AdapterPool, adapters: dict[str, Path]) -> None:
    with pool.using("a", adapters["a"]):
        with pytest.raises(AdapterError, match="inside a block using 'a'"), pool.using("b", adapters["b"]):
            pass
        with pytest.raises(AdapterError, match="in use"):
            pool.evict("a")
    assert pool.loaded == ["a"]


def test_concurrent_threads_get_the_sequential_answers(pool: AdapterPool, adapters: dict[str, Path],
                                                       inputs: dict[str, torch.Tensor], references) -> None:  # type: ignore[no-untyped-def]
    results: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def serve(version: str) -> None:
        try:
            start.wait()
            for _ in range(5):
                results[version].append(_served(pool, version, adapters, inputs))
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(version,)) for version in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    for version, outputs in results.items():
        assert len(outputs) == 5 and all(torch.equal(ids, references[version][0]) for ids in outputs), version
