"""Catalogued errors not covered elsewhere (docs/errors.md)."""

from dataclasses import replace

import pytest

from softprompt.data import DataSpec, load_split
from softprompt.errors import DataError, ModelError
from softprompt.models.backbone import load_backbone
from softprompt.tasks.classification import ClassificationTask
from softprompt.tasks.lm import LanguageModelingTask


def test_masked_task_needs_a_mask_token(tiny, tiny_dirs):
    no_mask = replace(tiny["bert"], tokenizer=tiny["llama"].tokenizer)
    with pytest.raises(ModelError, match="has no mask token"):
        ClassificationTask(no_mask, "{text}", {"a": " good"})
    with pytest.raises(ModelError, match="cannot load model .* AutoModelForMaskedLM"):
        load_backbone(str(tiny_dirs["llama"]), kind="masked")


def test_lm_task_needs_a_causal_model(tiny):
    with pytest.raises(ModelError, match="needs a causal LM"):
        LanguageModelingTask(tiny["bert"])


def test_unreadable_data_file(tmp_path):
    (tmp_path / "dev.jsonl").write_bytes(b'{"text": "\xff\xfe", "label": "a"}\n')
    with pytest.raises(DataError, match="not UTF-8 text"):
        load_split(DataSpec(str(tmp_path)), "dev")
