"""Medical VQA datasets by name (`builtin: pathvqa | slake | vqa-rad`), read from the copy the user has under
`root`, in whichever of the usual releases it is. Nothing is downloaded: a missing copy is an error that says
where to get one. The releases (schemas checked against their dataset cards and loaders, docs/datasets.md):

  pathvqa   Hugging Face `flaviagiammarino/path-vqa`: data/{train,validation,test}-*.parquet, columns image
            ({bytes, path}), question, answer; or VLMEvalKit's PathVQA_VAL.tsv / PathVQA_TEST.tsv.
  vqa-rad   Hugging Face `flaviagiammarino/vqa-rad`: data/{train,test}-*.parquet (image, question, answer), or
            a parquet release with the original's columns (`OctoMed/VQA-RAD`: answer_type, image_organ, ...);
            or the original `VQA_RAD Dataset Public.json` (OSF) with its `VQA_RAD Image Folder`, the test split
            being phrase_type test_freeform / test_para.
  slake     the original release (`BoKelvin/SLAKE`): {train,validation|validate,test}.json with imgs/, each
            record img_name, question, answer, q_lang, answer_type, modality, location, content_type, ...;
            English questions unless `lang: zh`. Or an English parquet release (`mdwiratathya/SLAKE-vqa-english`).

Each sample keeps the release's own columns (answer_type, modality, organ, ...) in its metadata; closed or open
then comes from `answer_type` where the release has it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evalfleet.config import DatasetConfig
from evalfleet.data.datasets import MediaResolver, file_samples, sample_from_row
from evalfleet.data.formats import FORMATS, DatasetError
from evalfleet.records import Sample

NAMES = {"PathVQA_VAL": ("pathvqa", "validation"), "PathVQA_TEST": ("pathvqa", "test")}
"""VLMEvalKit's names: (dataset, split)."""
SPLITS = {"pathvqa": ("train", "validation", "test"), "vqa-rad": ("train", "test"),
          "slake": ("train", "validation", "test")}
SOURCES = {
    "pathvqa": "https://huggingface.co/datasets/flaviagiammarino/path-vqa (e.g. `huggingface-cli download "
               "--repo-type dataset flaviagiammarino/path-vqa --local-dir ROOT`), or VLMEvalKit's PathVQA TSVs",
    "vqa-rad": "https://huggingface.co/datasets/flaviagiammarino/vqa-rad (or the original at https://osf.io/89kps/)",
    "slake": "https://huggingface.co/datasets/BoKelvin/SLAKE (train/validation/test.json and imgs.zip, unzipped "
             "into ROOT)",
}
KEPT = ("answer_type", "modality", "location", "content_type", "base_type", "q_lang", "image_organ",
        "question_type", "phrase_type", "qid", "img_id", "img_name", "image_name", "category")
"""The releases' own columns kept with each sample."""
VQA_RAD_JSON = "VQA_RAD Dataset Public.json"
VQA_RAD_PHRASES = {"train": ("freeform", "para"), "test": ("test_freeform", "test_para")}


def named_samples(cfg: DatasetConfig) -> list[Sample]:
    """The samples of a named medical dataset from `cfg.root`; DatasetError when no known release is there."""
    name, split = NAMES.get(cfg.builtin or "", (cfg.builtin, cfg.split))
    assert name is not None and cfg.root is not None
    if split not in SPLITS[name]:
        raise DatasetError(f"dataset {cfg.name!r}: {name} has splits {', '.join(SPLITS[name])}, not {split!r}")
    root = Path(cfg.root)
    if not root.is_dir():
        raise DatasetError(f"dataset {cfg.name!r}: root {root} is not a folder; get {name} from {SOURCES[name]}")
    parquet = sorted(root.glob(f"data/{split}-*.parquet")) or sorted(root.glob(f"{split}-*.parquet"))
    tsv = root / f"PathVQA_{'VAL' if split == 'validation' else 'TEST'}.tsv"
    fields = cfg.fields.model_copy(update={"question": "question", "answer": "answer", "image": "image"})
    if name == "slake" and (json_file := _slake_json(root, split)) is not None:
        records = [r for r in json.loads(json_file.read_text(encoding="utf-8")) if r.get("q_lang") == cfg.lang]
        rows = [(i, {**r, "image": r.get("img_name")}) for i, r in enumerate(records, 1)]
        return _samples(cfg, fields.model_copy(update={"id": "qid"}), json_file, rows, root / "imgs")
    if name == "vqa-rad" and (root / VQA_RAD_JSON).is_file():
        records = json.loads((root / VQA_RAD_JSON).read_text(encoding="utf-8"))
        rows = [(i, {**r, "image": r.get("image_name")}) for i, r in enumerate(records, 1)
                if r.get("phrase_type") in VQA_RAD_PHRASES[split]]
        return _samples(cfg, fields.model_copy(update={"id": "qid"}), root / VQA_RAD_JSON, rows,
                        root / "VQA_RAD Image Folder")
    if name == "pathvqa" and not parquet and tsv.is_file():
        return file_samples(cfg.model_copy(update={"path": str(tsv), "format": "vlmeval", "fields": fields}))
    if parquet:
        if name == "slake" and cfg.lang != "en":
            raise DatasetError(f"dataset {cfg.name!r}: the parquet release under {root} is English only; for "
                               f"lang {cfg.lang!r} use the original JSON release ({SOURCES['slake']})")
        rows, offset = [], 0
        for file in parquet:  # one sequence over the shards: ids are the row numbers of the split
            rows += [(offset + i, row) for i, row in FORMATS["parquet"](file)]
            offset = len(rows)
        return _samples(cfg, fields.model_copy(update={"id": fields.id or "qid"}), root / f"data/{split}-*.parquet",
                        rows, root)
    raise DatasetError(f"dataset {cfg.name!r}: no {name} {split} split under {root} (looked for "
                       f"{_looked_for(name, split)}); get it from {SOURCES[name]}")


def _slake_json(root: Path, split: str) -> Path | None:
    for stem in ((split, "validate") if split == "validation" else (split,)):
        for folder in (root, root / "Slake1.0"):
            if (folder / f"{stem}.json").is_file():
                return folder / f"{stem}.json"
    return None


def _looked_for(name: str, split: str) -> str:
    found = [f"data/{split}-*.parquet"]
    if name == "slake":
        found.append(f"{split}.json" + (" or validate.json" if split == "validation" else ""))
    if name == "vqa-rad":
        found.append(VQA_RAD_JSON)
    if name == "pathvqa":
        found.append(f"PathVQA_{'VAL' if split == 'validation' else 'TEST'}.tsv")
    return ", ".join(found)


def _samples(cfg: DatasetConfig, fields: Any, source: Path, rows: list[tuple[int, dict[str, Any]]],
             image_root: Path) -> list[Sample]:
    """Samples of the rows (row number, record), with the release's own columns in their metadata."""
    cfg = cfg.model_copy(update={"fields": fields})
    resolve = MediaResolver(image_root, base64_only=False)
    out = []
    for lineno, row in rows:
        sample = sample_from_row(cfg, str(source), "named", lineno, row, resolve)
        if sample.id == f"line{lineno}":  # no id column in this release: the row number in its split
            sample.id = str(lineno - 1)
        columns = {k: row[k] for k in (*KEPT, *cfg.columns) if row.get(k) not in (None, "")}
        if columns:
            sample.metadata["columns"] = columns
        if columns.get("answer_type"):
            sample.metadata["answer_type"] = str(columns["answer_type"]).lower()
        out.append(sample)
    return out
