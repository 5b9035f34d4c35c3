"""Detection methods, indexes, passages, clusters and reports on small hand-made documents."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from business_modules.redundancy import CanonicalRule, Detector, InvalidInputError, Method, RedundancySettings
from business_modules.redundancy.clustering import UnionFind, build_clusters
from business_modules.redundancy.detection import all_pairs
from business_modules.redundancy.features import Featurizer
from business_modules.redundancy.index import CorpusIndex, threshold_bucket
from business_modules.redundancy.models import Pair
from business_modules.redundancy.passages import matching_passages
from business_modules.redundancy.report import report_csv
from business_modules.redundancy.text import tokenize

BASE = (
    "Inheritance lets a new class reuse the methods and fields of an existing class, "
    "so shared behaviour is written once and specialised where needed."
)
DOCS = {
    "orig": BASE,
    "copy": BASE.upper().replace(" ", "   "),  # exact after normalisation
    "near": BASE.replace("specialised", "refined"),  # one word edited
    "part": "Some intro about software design. " + BASE[:80] + " Then an unrelated ending about databases.",
    "other": "Relational databases store rows in tables and answer declarative queries with indexes.",
}


def make_detector(**overrides: object) -> Detector:
    return Detector(RedundancySettings(**overrides))


def make_index(detector: Detector, docs: dict[str, str] = DOCS) -> CorpusIndex:
    index = detector.new_index()
    for seq, (key, text) in enumerate(docs.items()):
        index.add(detector.indexed(doc_id=key, seq=seq, text=text, name=key.title()))
    return index


def pair_keys(pairs: list[Pair]) -> set[tuple[str, str]]:
    return {(p.a, p.b) for p in pairs}


def test_threshold_bucket() -> None:
    assert threshold_bucket(0.5) == 0.5
    assert threshold_bucket(0.07) == 0.05
    assert threshold_bucket(0.03) == 0.01
    assert threshold_bucket(1.0) == 1.0
    with pytest.raises(ValueError):
        threshold_bucket(0)


def test_exact_method_pairs_and_query() -> None:
    detector = make_detector()
    index = make_index(detector)
    pairs, complete = all_pairs(index, Method.EXACT, 1.0)
    assert complete and pair_keys(pairs) == {("orig", "copy")}
    matches = detector.search(index, "inheritance LETS a new class reuse" + BASE[34:], Method.EXACT)
    assert {m.doc_id for m in matches} == {"orig", "copy"}


def test_near_method_finds_light_edits_not_partial_copies() -> None:
    detector = make_detector()
    index = make_index(detector)
    pairs, _ = all_pairs(index, Method.NEAR, 0.5)
    assert pair_keys(pairs) == {("orig", "copy"), ("orig", "near"), ("copy", "near")}
    near = next(p for p in pairs if (p.a, p.b) == ("orig", "near"))
    # 24 words -> 22 shingles; editing the 3rd-to-last word changes 3 of them: 19 / (22 + 3)
    assert near.score == pytest.approx(19 / 25)


def test_containment_method_finds_partial_reuse_with_exact_scores() -> None:
    detector = make_detector()
    index = make_index(detector)
    pairs, _ = all_pairs(index, Method.CONTAINMENT, 0.3)
    assert ("orig", "part") in pair_keys(pairs)
    assert not any("other" in (p.a, p.b) for p in pairs)
    part = next(p for p in pairs if (p.a, p.b) == ("orig", "part"))
    assert part.score == max(part.details["a_in_b"], part.details["b_in_a"])
    matches = detector.search(index, DOCS["part"], Method.CONTAINMENT, 0.3)
    by_id = {m.doc_id: m for m in matches}
    assert {"orig", "copy", "near"} <= set(by_id)
    assert by_id["orig"].details["query_in_document"] == by_id["orig"].score
    assert by_id["orig"].passages and by_id["orig"].passages[0].text.startswith("Inheritance lets a new class")


def test_query_text_without_words_is_refused() -> None:
    detector = make_detector()
    with pytest.raises(InvalidInputError):
        detector.search(make_index(detector), "?!", Method.NEAR)


def test_index_add_remove_keep_structures_consistent() -> None:
    detector = make_detector()
    index = make_index(detector)
    probe = detector.indexed(doc_id="x", seq=99, text=BASE)
    assert detector.search(index, BASE, Method.NEAR, 0.5)  # builds the LSH for bucket 0.5
    index.remove("orig")
    index.remove("copy")
    index.remove("missing")  # ignored
    assert {m.doc_id for m in detector.search(index, BASE, Method.NEAR, 0.5)} == {"near"}
    assert {m.doc_id for m in detector.search(index, BASE, Method.EXACT)} == set()
    index.add(probe)
    assert {m.doc_id for m in detector.search(index, BASE, Method.EXACT)} == {"x"}
    assert "x" in {m.doc_id for m in detector.search(index, BASE, Method.CONTAINMENT, 0.5)}
    with pytest.raises(ValueError):
        index.add(probe)  # same id twice: refused, index unchanged
    assert len(index) == 4


def test_stored_minhash_round_trip_and_bad_blobs() -> None:
    featurizer = Featurizer()
    features = featurizer.features(BASE)
    blob = featurizer.minhash_bytes(features.minhash)
    assert featurizer.with_stored_minhash(BASE, blob).minhash == features.minhash
    assert featurizer.with_stored_minhash(BASE, b"garbage").minhash == features.minhash
    other = Featurizer(num_perm=64).with_stored_minhash(BASE, blob)
    assert len(other.minhash) == 64


def test_passages_find_moved_text_with_offsets() -> None:
    a = "Alpha beta gamma delta. Unrelated words here. One two three four five."
    b = "One two three four five appear first. Then alpha beta gamma delta!"
    passages = matching_passages(a, tokenize(a), tokenize(b), min_words=3)
    assert [(p.words, p.text) for p in passages] == [(5, "One two three four five"), (4, "Alpha beta gamma delta")]
    first = passages[0]
    assert b[first.b_start : first.b_end] == "One two three four five"
    assert a[first.a_start : first.a_end] == first.text
    assert matching_passages(a, tokenize(a), tokenize(b), min_words=6) == []


def test_passages_bounded_on_repetitive_text() -> None:
    text = "a " * 5000
    passages = matching_passages(text, tokenize(text), tokenize(text))
    assert len(passages) == 1 and passages[0].words == 5000


def test_union_find_groups() -> None:
    uf = UnionFind()
    uf.union("a", "b")
    uf.union("c", "d")
    uf.union("b", "d")
    uf.find("e")
    assert sorted(sorted(g) for g in uf.groups()) == [["a", "b", "c", "d"]]


@pytest.mark.parametrize(("rule", "canonical"), [(CanonicalRule.EARLIEST, "b"), (CanonicalRule.LONGEST, "c")])
def test_clusters_canonical_rules(rule: CanonicalRule, canonical: str) -> None:
    pairs = [Pair("b", "c", 0.9, Method.NEAR), Pair("c", "d", 0.8, Method.NEAR), Pair("x", "y", 1.0, Method.NEAR)]
    seq = {"b": 1, "c": 2, "d": 3, "x": 0, "y": 4}
    words = {"b": 10, "c": 50, "d": 50, "x": 5, "y": 5}
    clusters = build_clusters(pairs, seq=seq, word_count=words, rule=rule)
    assert [c.canonical for c in clusters] == ["x", canonical]
    assert [c.id for c in clusters] == [1, 2]
    assert clusters[1].members[0] == canonical and sorted(clusters[1].members) == ["b", "c", "d"]


def test_report_json_and_csv() -> None:
    detector = make_detector()
    index = make_index(detector, {**DOCS, "formula": "=HYPERLINK(evil) " + DOCS["other"]})
    report = detector.duplicates(index, corpus="demo", method=Method.NEAR, threshold=0.5)
    assert report["document_count"] == 6
    assert report["redundancy"] == {"duplicate_documents": 3, "redundancy_pct": 50.0, "clusters": 2}
    assert [c["canonical"]["id"] for c in report["clusters"]] == ["orig", "other"]
    assert report["pairs"][0]["score"] == 1.0 and report["pairs"][0]["passages"]
    rows = list(csv.DictReader(io.StringIO(report_csv(report))))
    assert len(rows) == report["pair_count"] == 4
    assert rows[0]["method"] == "near" and float(rows[0]["score"]) == 1.0
    assert {r["doc_b_name"] for r in rows} >= {"Copy", "Near"}
    formula_row = next(r for r in rows if r["doc_b_id"] == "formula")
    assert formula_row["cluster_id"] == "2" and formula_row["canonical_id"] == "other"
    truncated = detector.duplicates(index, corpus="demo", method=Method.NEAR, threshold=0.5, max_pairs=1)
    assert truncated["pairs_truncated"] and len(truncated["pairs"]) == 1 and truncated["redundancy"]["clusters"] == 2


def test_csv_cells_never_start_a_formula() -> None:
    report = {
        "clusters": [],
        "pairs": [
            {
                "a": {"id": "1", "name": "=cmd()"},
                "b": {"id": "2", "name": "+1"},
                "score": 0.5,
                "method": "near",
                "cluster_id": None,
                "passages": [{"words": 3, "text": "@SUM(A1)"}],
            }
        ],
    }
    row = next(csv.DictReader(io.StringIO(report_csv(report))))
    assert (row["doc_a_name"], row["doc_b_name"], row["longest_passage"]) == ("'=cmd()", "'+1", "'@SUM(A1)")


@pytest.fixture(scope="module")
def semantic_detector() -> Detector:
    from business_modules.redundancy.embeddings import shared_encoder

    return Detector(RedundancySettings(embedding_chunk_words=16), shared_encoder())


@pytest.mark.slow
def test_semantic_method_finds_paraphrase(semantic_detector: Detector) -> None:
    docs = {
        "a": "The cat sat on the mat.",
        "b": "A cat was sitting on the rug.",
        "c": "Quarterly revenue grew by ten percent thanks to strong exports.",
    }
    index = make_index(semantic_detector, docs)
    with pytest.raises(ValueError, match="no embedding"):
        all_pairs(index, Method.SEMANTIC, 0.5)  # the detector fills embeddings first, not the index
    report = semantic_detector.duplicates(index, corpus="s", method=Method.SEMANTIC, threshold=0.6)
    assert [(p["a"]["id"], p["b"]["id"]) for p in report["pairs"]] == [("a", "b")]
    ids, matrix = index.embedding_matrix()
    assert matrix.shape == (3, 384) and np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    matches = semantic_detector.search(index, "Revenue rose ten percent in the quarter due to exports.", Method.SEMANTIC, 0.6)
    assert [m.doc_id for m in matches] == ["c"]


@pytest.mark.slow
def test_long_document_embedding_covers_every_chunk(semantic_detector: Detector) -> None:
    head = "The cat sat on the mat and purred all afternoon in the warm sun by the window."
    tail = "Quarterly revenue grew by ten percent thanks to strong exports and lower costs overall."
    vectors = semantic_detector.embed([head, tail, head + " " + tail])
    # the two-chunk document sits between its halves, not on the first chunk only
    assert vectors[2] @ vectors[1] > 0.5 and vectors[2] @ vectors[0] > 0.5
