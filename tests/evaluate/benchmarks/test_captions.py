"""Caption readers of the three published layouts, the result file, and the metrics against pycocoevalcap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmgpt.evaluate.benchmarks.caption_metrics import (
    JavaMissingError,
    caption_metrics_problem,
    require_caption_metrics,
    score_captions,
)
from mmgpt.evaluate.benchmarks.captions import read_captions, write_caption_results
from mmgpt.evaluate.benchmarks.common import BenchmarkFormatError
from mmgpt.evaluate.benchmarks.items import CaptionItem
from tests.evaluate.benchmarks import published

PROBLEM = caption_metrics_problem()
needs_java = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")


def test_karpathy_coco_test_split(tmp_path: Path) -> None:
    items = read_captions(published.write_karpathy(tmp_path), tmp_path / "coco")
    assert [i.image_id for i in items] == [2, 3]  # cocoid, test split only, file order
    assert items[0].image == tmp_path / "coco/val2014/COCO_val2014_000000000002.jpg"
    assert items[0].references == ("A man riding a horse on a beach.", "A person rides a brown horse.")
    assert [i.image_id for i in read_captions(tmp_path / "dataset_coco.json", split="val")] == [4]
    assert len(read_captions(tmp_path / "dataset_coco.json", limit=1)) == 1


def test_karpathy_flickr30k(tmp_path: Path) -> None:
    items = read_captions(published.write_karpathy(tmp_path, "dataset_flickr30k.json"), tmp_path / "flickr")
    assert [i.image_id for i in items] == [1000092797, 1000092798]  # the file name's number
    assert items[0].image == tmp_path / "flickr/1000092797.jpg"


def test_official_captions_val2014(tmp_path: Path) -> None:
    items = read_captions(published.write_coco_official(tmp_path), tmp_path / "val2014")
    # images with captions, in the order of "images"; captions in annotation order
    assert items == [
        CaptionItem(9, tmp_path / "val2014/COCO_val2014_000000000009.jpg", ("A plate of food.",)),
        CaptionItem(5, tmp_path / "val2014/COCO_val2014_000000000005.jpg", ("A bowl of fruit.", "Fruit in a bowl.")),
    ]


def test_lavis_karpathy_list(tmp_path: Path) -> None:
    path = tmp_path / "coco_karpathy_test.json"
    path.write_text(json.dumps([{"image": "val2014/COCO_val2014_000000391895.jpg", "caption": ["A man.", "A bike."]}]))
    (item,) = read_captions(path, tmp_path)
    assert (item.image_id, item.references) == (391895, ("A man.", "A bike."))


def test_missing_sentence_text(tmp_path: Path) -> None:
    path = published.write_karpathy(tmp_path)
    document = json.loads(path.read_text())
    del document["images"][2]["sentences"][1]["raw"]
    path.write_text(json.dumps(document))
    with pytest.raises(BenchmarkFormatError, match=r"images\[2\], field 'sentences\[1\]\.raw': missing"):
        read_captions(path)


def test_caption_results_file(tmp_path: Path) -> None:
    items = read_captions(published.write_karpathy(tmp_path))
    out = write_caption_results(tmp_path / "captions.json", {2: "A horse.", 3: "Dogs."}, items)
    assert json.loads(out.read_text()) == [{"image_id": 2, "caption": "A horse."}, {"image_id": 3, "caption": "Dogs."}]


def test_missing_java_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(JavaMissingError, match="apt-get install default-jre-headless"):
        require_caption_metrics()


@needs_java
def test_metrics_equal_pycocoevalcap_run_directly(tmp_path: Path) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    items = [
        CaptionItem(2, Path("2.jpg"), ("A man riding a horse on a beach.", "A person rides a brown horse.")),
        CaptionItem(3, Path("3.jpg"), ("Two dogs play in the snow.", "Dogs running through snow.")),
        CaptionItem(5, Path("5.jpg"), ("A bowl of fruit on a table.", "Fruit in a bowl.")),
    ]
    predictions = {
        2: "A man rides a horse on the beach.",
        3: "Two dogs running in snow.",
        5: "A bowl of fruit on the table.",
    }
    score = score_captions(predictions, items)

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": r} for r in i.references] for k, i in enumerate(items)})
    res = tokenizer.tokenize({k: [{"caption": predictions[i.image_id]}] for k, i in enumerate(items)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, cider_each = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    assert score.bleu == tuple(bleu)
    assert (score.cider, score.rouge_l) == (cider, rouge)
    # METEOR 1.5 as pycocoevalcap 1.2's Meteor().compute_score(gts, res) gives it for these captions; not rerun
    # here, since each METEOR process spends ~6 s loading its paraphrase tables.
    assert score.meteor == 0.4885941653496307
    assert [s["CIDEr"] for s in score.per_item.values()] == list(cider_each)
    assert list(score.per_item) == [2, 3, 5]
    assert score.headline == score.cider > 1.0 and score.bleu4 > 0.1
    assert score.summary()["BLEU-4"] == bleu[3]
