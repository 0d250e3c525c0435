"""Tests for melgenre.evaluate: metrics against scikit-learn, track aggregation, plots, report."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
)

from melgenre import evaluate
from melgenre.errors import MelgenreError

CLASSES = ["blues", "classical", "country", "disco", "hiphop"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def random_case(case: str, n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded probabilities and labels over 5 classes, bent to make one edge case."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=n)
    y = rng.integers(0, len(CLASSES), size=n)
    if case == "never_predicted":
        probs[:, 2] = 0.0  # class 2 is in y but never the argmax
    elif case == "absent_from_y":
        y[y == 3] = 0  # class 3 is predicted but never true
    elif case == "absent_everywhere":
        y[y == 4] = 1  # class 4 is neither true nor predicted
        probs[:, 4] = 0.0
    return probs, y


@pytest.mark.parametrize("case", ["plain", "never_predicted", "absent_from_y", "absent_everywhere"])
def test_metrics_match_sklearn(case):
    probs, y = random_case(case)
    pred = probs.argmax(axis=1)
    m = evaluate.compute_metrics(probs, y, CLASSES)
    # sklearn's macro average without labels= runs over the labels in y_true ∪ y_pred, as documented
    assert m["n"] == len(y)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_precision"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))
    assert m["macro_recall"] == pytest.approx(recall_score(y, pred, average="macro", zero_division=0))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about predicted classes absent from y_true
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=range(len(CLASSES)), zero_division=0)
    assert [row["class"] for row in m["per_class"]] == CLASSES
    for key, expected in (("precision", precision), ("recall", recall), ("f1", f1), ("support", support)):
        assert [row[key] for row in m["per_class"]] == pytest.approx(expected.tolist())
    assert m["confusion"] == confusion_matrix(y, pred, labels=range(len(CLASSES))).tolist()
    assert json.loads(json.dumps(m)) == m
    assert all(type(m[k]) is float for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1"))


def test_edge_cases_really_happen():
    """The parametrised cases above do exercise what they are named after."""
    probs, y = random_case("never_predicted")
    assert 2 in y and 2 not in probs.argmax(axis=1)
    probs, y = random_case("absent_from_y")
    assert 3 not in y and 3 in probs.argmax(axis=1)
    m = evaluate.compute_metrics(probs, y, CLASSES)
    assert m["balanced_accuracy"] > m["macro_recall"]  # the predicted-only class counts 0 in macro recall
    probs, y = random_case("absent_everywhere")
    m = evaluate.compute_metrics(probs, y, CLASSES)
    per_class_mean = np.mean([row["precision"] for row in m["per_class"]])
    assert m["macro_precision"] > per_class_mean  # the absent class is left out, not counted as 0


@pytest.mark.parametrize("probs, y, message", [
    (np.ones((3, 4)), np.zeros(3, dtype=int), "5 classes"),
    (np.ones((3, 5)), np.array([0, 1, 5]), r"\[0, 5\)"),
    (np.ones((3, 5)), np.zeros(2, dtype=int), "3 rows"),
    (np.ones((0, 5)), np.zeros(0, dtype=int), "non-empty"),
])
def test_compute_metrics_rejects_bad_input(probs, y, message):
    with pytest.raises(MelgenreError, match=message):
        evaluate.compute_metrics(probs, y, CLASSES)


def test_track_level_means_in_first_appearance_order():
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.7, 0.3]])
    y = np.array([1, 0, 1, 0, 0])
    ids = np.array(["b", "a", "b", "c", "a"])
    track_probs, track_y, tracks = evaluate.track_level(probs, y, ids)
    assert tracks.tolist() == ["b", "a", "c"]
    assert track_y.tolist() == [1, 0, 0]
    np.testing.assert_allclose(track_probs, [[0.4, 0.6], [0.8, 0.2], [0.5, 0.5]])


def test_track_level_rejects_mixed_labels():
    ids = np.array(["a", "a", "b"])
    with pytest.raises(MelgenreError, match=r"track 'a' has chunks with different labels \[0, 1\]"):
        evaluate.track_level(np.full((3, 2), 0.5), np.array([0, 1, 1]), ids)
    with pytest.raises(MelgenreError, match="3 rows"):
        evaluate.track_level(np.full((3, 2), 0.5), np.array([0, 1, 1]), ids[:2])


def test_track_aggregation_fixes_chunk_errors():
    # track t0 (class 0): one wrong chunk of three, outvoted by the mean
    # track t1 (class 1): two wrong chunks, but the right one is confident enough
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7],
                      [0.1, 0.9], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 0, 0, 1, 1, 1])
    ids = np.array(["t0"] * 3 + ["t1"] * 3)
    result = evaluate.evaluate_predictions(probs, y, ids, ["a", "b"])
    assert result["chunk"]["n"] == 6 and result["chunk"]["accuracy"] == pytest.approx(0.5)
    assert result["track"]["n"] == 2 and result["track"]["accuracy"] == 1.0
    assert result["track"]["confusion"] == [[1, 0], [0, 1]]
    unchunked = evaluate.evaluate_predictions(probs, y, np.array([f"t{i}" for i in range(6)]), ["a", "b"])
    chunk_like = {k: v for k, v in unchunked["track"].items() if k != "intervals"}
    chunk_like["per_class"] = [{k: v for k, v in c.items() if k != "recall_interval"} for c in chunk_like["per_class"]]
    assert unchunked["chunk"] == chunk_like
    assert result["track"]["intervals"]["accuracy"] == [1.0, 1.0] and "intervals" not in result["chunk"]
    # each class's recall has its Wilson interval at track level (1 of 1 right), none at chunk level
    assert [c["recall_interval"] for c in result["track"]["per_class"]] == [evaluate.wilson_interval(1, 1)] * 2
    assert evaluate.wilson_interval(1, 1)[0] < 1.0
    assert all("recall_interval" not in c for c in result["chunk"]["per_class"])


def write_history(path: Path) -> Path:
    """A 4-epoch history.csv with an empty val cell, as the training module writes it."""
    path.write_text(
        "epoch,train_loss,train_accuracy,train_macro_precision,val_loss,val_accuracy,val_macro_precision,lr\n"
        "0,2.1,0.20,0.18,2.0,0.25,0.22,0.001\n"
        "1,1.7,0.40,0.38,,,,0.001\n"
        "2,1.3,0.55,0.52,1.5,0.50,0.48,0.0005\n"
        "3,1.0,0.70,0.69,1.6,0.47,0.45,0.0001\n")
    return path


@pytest.fixture(scope="module")
def results() -> dict:
    """evaluate_predictions dicts for a val and a test split of 5 classes × 3 chunks per track."""
    out = {}
    for seed, split in enumerate(("val", "test")):
        probs, y_track = random_case("plain", n=20, seed=seed + 1)
        out[split] = evaluate.evaluate_predictions(
            np.repeat(probs, 3, axis=0) + np.random.default_rng(seed).normal(0, 0.1, (60, len(CLASSES))),
            np.repeat(y_track, 3), np.repeat([f"{split}{i}" for i in range(20)], 3), CLASSES)
    return out


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 5_000


def test_save_all_plots_writes_every_png(tmp_path, results):
    write_history(tmp_path / "history.csv")
    counts = {"train": [80, 79, 80, 80, 81], "val": [10, 10, 10, 10, 10], "test": [10, 11, 10, 9, 10]}
    paths = evaluate.save_all_plots(tmp_path, results, CLASSES, split_counts=counts)
    assert sorted(p.name for p in paths) == sorted([
        "confusion_val_track.png", "per_class_val_track.png", "confusion_test_track.png",
        "per_class_test_track.png", "class_distribution.png", "history.png"])
    for path in paths:
        assert_png(path)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_plot_history_without_val_column(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,train_loss,train_macro_precision\n0,1.0,0.3\n1,0.8,\n")
    assert_png(evaluate.plot_history(history, tmp_path / "h.png"))
    history.write_text("epoch,train_loss\n0,not-a-number\n")
    with pytest.raises(MelgenreError, match="history.csv"):
        evaluate.plot_history(history, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_plot_class_distribution_rejects_wrong_length(tmp_path):
    with pytest.raises(MelgenreError, match="'val' has 2 counts for 5 classes"):
        evaluate.plot_class_distribution({"val": [1, 2]}, CLASSES, tmp_path / "d.png")


def test_per_class_table(results):
    table = evaluate.per_class_table(results["test"]["track"]).splitlines()
    assert table[0] == "| class | precision | recall | recall, 95 % | F1 | support |"
    assert len(table) == 2 + len(CLASSES)
    first = results["test"]["track"]["per_class"][0]
    low, high = evaluate.wilson_interval(round(first["recall"] * first["support"]), first["support"])
    assert table[2] == (f"| blues | {first['precision']:.3f} | {first['recall']:.3f} | {low:.3f}-{high:.3f} | "
                        f"{first['f1']:.3f} | {first['support']} |")


def test_write_report(tmp_path, results):
    evaluate.save_all_plots(tmp_path, results, CLASSES)
    config = {"preset": "fast", "model": {"name": "melcnn", "width": 32}, "data": Path("/data/gtzan.h5")}
    report = evaluate.write_report(tmp_path, "melcnn on GTZAN", config, results, extra_lines=["trained 3 epochs"])
    text = report.read_text()
    assert report == tmp_path / "report.md"
    assert text.startswith("# melcnn on GTZAN\n")
    for split in ("val", "test"):
        for level in ("chunk", "track"):
            m = results[split][level]
            assert (f"| {split} | {level} | {m['n']} | {m['accuracy']:.3f} | {m['macro_precision']:.3f} "
                    f"| {m['macro_recall']:.3f} | {m['macro_f1']:.3f} |") in text
        ci = results[split]["track"]["intervals"]
        assert (f"95% bootstrap intervals, {split}, track level" in text
                and f"accuracy [{ci['accuracy'][0]:.3f}, {ci['accuracy'][1]:.3f}]" in text)
    assert "## Per class (test, track level)" in text
    assert "| class | precision | recall | recall, 95 % | F1 | support |" in text
    assert "trained 3 epochs" in text
    assert "![confusion_test_track](confusion_test_track.png)" in text
    assert "history.png" not in text  # not written: no history.csv
    assert "```yaml\npreset: fast\nmodel:\n  name: melcnn\n  width: 32\ndata: /data/gtzan.h5\n```" in text


def test_pooled_metrics_balanced_against_a_hand_computed_matrix():
    """'balanced' reweights every true-class row to the same count: per-class recall and the
    precision those rates give on a class-balanced set, worked out by hand here."""
    classes = ["a", "b", "c", "d"]  # d has no rows: left out of 'balanced'
    fold1 = [[5, 1, 0, 0], [1, 1, 0, 0], [2, 3, 6, 1], [0, 0, 0, 0]]
    fold2 = [[3, 1, 0, 0], [0, 2, 0, 0], [2, 2, 4, 0], [0, 0, 0, 0]]
    # pooled: a = [8, 2, 0, 0] (10 rows), b = [1, 3, 0, 0] (4), c = [4, 5, 10, 1] (20), d none
    metrics = evaluate.pooled_metrics([fold1, fold2], classes)
    assert metrics["confusion"] == [[8, 2, 0, 0], [1, 3, 0, 0], [4, 5, 10, 1], [0, 0, 0, 0]]
    assert metrics["n"] == 34 and metrics["accuracy"] == pytest.approx(21 / 34)  # unweighted
    # row rates: a = [.8, .2, 0, 0], b = [.25, .75, 0, 0], c = [.2, .25, .5, .05]
    recall = [4 / 5, 3 / 4, 1 / 2]
    # columns over the present rows: a = .8 + .25 + .2 = 1.25, b = .2 + .75 + .25 = 1.2, c = .5
    precision = [0.8 / 1.25, 0.75 / 1.2, 0.5 / 0.5]  # 16/25, 5/8, 1
    f1 = [32 / 45, 15 / 22, 2 / 3]  # 2PR / (P + R)
    for p, r, f in zip(precision, recall, f1):
        assert 2 * p * r / (p + r) == pytest.approx(f)
    balanced = metrics["balanced"]
    assert set(balanced) == {"accuracy", "macro_precision", "macro_f1"}
    assert balanced["accuracy"] == pytest.approx(sum(recall) / 3)  # 0.68333
    assert balanced["macro_precision"] == pytest.approx(sum(precision) / 3)  # 0.75500
    assert balanced["macro_f1"] == pytest.approx(sum(f1) / 3)  # 0.68641
    # a class-balanced matrix is unchanged by the reweighting
    even = evaluate.pooled_metrics([[[3, 1], [2, 2]]], ["x", "y"])
    assert even["balanced"]["accuracy"] == pytest.approx(even["accuracy"]) == pytest.approx(5 / 8)
    assert even["balanced"]["macro_precision"] == pytest.approx(even["macro_precision"])
    assert even["balanced"]["macro_f1"] == pytest.approx(even["macro_f1"])


def test_confusion_scores_match_compute_metrics():
    """The vectorised scores behind the intervals are compute_metrics' figures, matrix by matrix."""
    rng = np.random.default_rng(3)
    matrices = []
    for n_classes in (2, 4, 7):
        y = rng.integers(0, n_classes, 60)
        pred = np.where(rng.random(60) < 0.6, y, rng.integers(0, n_classes, 60))
        y[:3] = 0  # every matrix has a class 0 row, and some classes may be missing or never predicted
        m = evaluate.compute_metrics(np.eye(n_classes)[pred], y, [f"c{i}" for i in range(n_classes)])
        scores = evaluate.confusion_scores(np.array(m["confusion"]))
        for key in evaluate.INTERVAL_METRICS:
            assert float(scores[key]) == pytest.approx(m[key], abs=1e-6), (n_classes, key)
        matrices.append(m["confusion"])
    stacked = evaluate.confusion_scores(np.array([matrices[1], matrices[1]]))
    assert stacked["accuracy"].shape == (2,)


def test_bootstrap_intervals():
    """Intervals bracket the figure, are reproducible, narrow with more tracks, match the binomial
    spread of one class's recall, and are degenerate for a perfect classifier."""
    confusion = [[14, 4, 2], [3, 5, 0], [1, 1, 6]]
    ci = evaluate.bootstrap_intervals(confusion)
    point = evaluate.confusion_scores(np.array(confusion))
    assert ci["level"] == 0.95 and ci["samples"] == evaluate.BOOTSTRAP_SAMPLES
    for key in evaluate.INTERVAL_METRICS:
        low, high = ci[key]
        assert low < float(point[key]) < high, key
    assert evaluate.bootstrap_intervals(confusion) == ci  # seeded
    assert evaluate.bootstrap_intervals(confusion, seed=1) != ci
    tenfold = evaluate.bootstrap_intervals(np.array(confusion) * 10)
    for key in evaluate.INTERVAL_METRICS:
        assert tenfold[key][1] - tenfold[key][0] < 0.5 * (ci[key][1] - ci[key][0]), key
    # one class scored 100 times, 70 right: recall's spread is the binomial one, ±1.96·sqrt(.7·.3/100)
    one = evaluate.bootstrap_intervals([[70, 30], [0, 0]])
    half_width = 1.96 * np.sqrt(0.7 * 0.3 / 100)
    assert one["balanced_accuracy"] == pytest.approx([0.7 - half_width, 0.7 + half_width], abs=0.02)
    assert evaluate.bootstrap_intervals([[5, 0], [0, 3]])["accuracy"] == [1.0, 1.0]
    # rows= restricts the balanced accuracy to those classes: class 2 alone is 6 of 8 right
    assert evaluate.confusion_scores(np.array(confusion), rows=[2])["balanced_accuracy"] == pytest.approx(0.75)
    assert evaluate.with_interval(0.7182, [0.65, 0.781]) == "0.718 [0.650, 0.781]"
    assert evaluate.with_interval(0.7182, None) == "0.718"


def test_group_bootstrap_intervals_move_a_groups_songs_together():
    """Resampling whole groups (artists): with one track per group it spreads like the track
    bootstrap; when each artist's songs are all right or all wrong it is much wider."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 60)
    # 12 artists per class, 5 songs each; an artist is either all right or all wrong (8 of 12 right)
    right = np.repeat(np.concatenate([rng.permutation([1] * 8 + [0] * 4) for _ in range(2)]), 5).astype(bool)
    pred = np.where(right, y, 1 - y)
    artists = [f"a{i // 5}" for i in range(120)]
    tracks = evaluate.bootstrap_intervals(evaluate.compute_metrics(np.eye(2)[pred], y, ["x", "y"])["confusion"])
    grouped = evaluate.group_bootstrap_intervals(y, pred, artists, 2)
    assert grouped["groups"] == 24 and grouped["method"].startswith("percentile bootstrap, whole groups")
    for key in ("accuracy", "balanced_accuracy"):
        low, high = grouped[key]
        assert low < 2 / 3 < high
        assert high - low > 1.6 * (tracks[key][1] - tracks[key][0]), key  # about sqrt(5) wider
    assert evaluate.group_bootstrap_intervals(y, pred, artists, 2) == grouped  # seeded
    singles = evaluate.group_bootstrap_intervals(y, pred, [str(i) for i in range(120)], 2)
    assert singles["accuracy"] == pytest.approx(tracks["accuracy"], abs=0.03)  # one song per group: the same spread
    assert evaluate.group_bootstrap_intervals(y, y, artists, 2)["accuracy"] == [1.0, 1.0]
    with pytest.raises(MelgenreError, match="need equal, non-empty rows"):
        evaluate.group_bootstrap_intervals(y, pred[:-1], artists, 2)


def test_track_predictions_file_round_trip(tmp_path):
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    path = evaluate.write_track_predictions(tmp_path / "p.csv", ["a/x", "b/y"], probs, np.array([0, 1]), ["a", "b", "c"])
    text = path.read_text().splitlines()
    assert text[0] == "track,label,predicted,a,b,c" and text[2] == "b/y,b,c,0.1,0.3,0.6"
    tracks, back, labels, classes = evaluate.read_track_predictions(path)
    assert list(tracks) == ["a/x", "b/y"] and classes == ["a", "b", "c"] and labels.tolist() == [0, 1]
    np.testing.assert_allclose(back, probs)


def test_pooled_metrics_of_the_classes_every_fold_learnt():
    """A class scored in a fold that never trained on it (GTZAN dev: country, all in one part) is
    left out of the 'learnable' balanced accuracy, which gets its own interval."""
    classes = ["a", "b", "c", "d"]
    fold1 = [[5, 1, 0, 0], [1, 1, 0, 0], [2, 3, 6, 1], [0, 0, 0, 0]]
    fold2 = [[3, 1, 0, 0], [0, 2, 0, 0], [2, 2, 4, 0], [0, 0, 0, 0]]
    scored = np.sum([fold1, fold2], axis=(0, 2))
    learnable = evaluate.learnable_classes(classes, scored, [[], ["c"]])
    assert learnable == ["a", "b"]  # c untrained in fold 1, d never scored
    assert evaluate.learnable_classes(classes, scored, [[], []]) is None  # every fold trained every class
    metrics = evaluate.pooled_metrics([fold1, fold2], classes, learnable)
    assert metrics["learnable"]["classes"] == ["a", "b"]
    assert metrics["learnable"]["balanced_accuracy"] == pytest.approx((8 / 10 + 3 / 4) / 2)
    low, high = metrics["learnable"]["interval"]
    assert low < metrics["learnable"]["balanced_accuracy"] < high
    assert metrics["balanced_accuracy"] == pytest.approx((8 / 10 + 3 / 4 + 10 / 20) / 3)
    assert "learnable" not in evaluate.pooled_metrics([fold1, fold2], classes)
    a, b, c, d = metrics["per_class"]  # each class's recall with its Wilson interval: c is 10 of 20
    assert c["recall_interval"] == evaluate.wilson_interval(10, 20) and "recall_interval" not in d
    assert metrics["intervals"]["balanced_accuracy"][0] < metrics["balanced_accuracy"] < metrics["intervals"][
        "balanced_accuracy"][1]


def test_paired_bootstrap_of_two_classifiers():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 120)
    a = np.where(rng.random(120) < 0.8, y, (y + 1) % 3)
    b = np.where(rng.random(120) < 0.85, a, (a + 2) % 3)  # mostly a's answers, a few changed
    result = evaluate.paired_bootstrap(y, a, b, 3, learnable=["x", "z"], classes=["x", "y", "z"])
    assert result["n"] == 120 and result["learnable"] == ["x", "z"]
    for pred, side in ((a, "a"), (b, "b")):
        m = evaluate.compute_metrics(np.eye(3)[pred], y, ["x", "y", "z"])
        for key in evaluate.INTERVAL_METRICS:
            assert result["metrics"][key][side] == pytest.approx(m[key], abs=1e-6)
        recall = [c["recall"] for c in m["per_class"]]
        assert result["metrics"]["balanced_accuracy_learnable"][side] == pytest.approx((recall[0] + recall[2]) / 2)
    right_a, right_b = a == y, b == y
    assert result["discordant"] == {"a_only": int(np.sum(right_a & ~right_b)), "b_only": int(np.sum(right_b & ~right_a))}
    acc = result["metrics"]["accuracy"]
    assert acc["difference"] == pytest.approx(acc["a"] - acc["b"]) and acc["interval"][0] < acc["difference"] < acc[
        "interval"][1]
    # pairing: the difference's interval is narrower than either classifier's own interval
    own = evaluate.bootstrap_intervals(evaluate.compute_metrics(np.eye(3)[a], y, ["x", "y", "z"])["confusion"])
    assert acc["interval"][1] - acc["interval"][0] < own["accuracy"][1] - own["accuracy"][0]
    # a classifier against itself: no difference at all; against a strictly worse one: always better
    same = evaluate.paired_bootstrap(y, a, a, 3)
    assert same["metrics"]["accuracy"]["interval"] == [0.0, 0.0] and same["metrics"]["accuracy"]["a_better"] == 0
    assert same["discordant"] == {"a_only": 0, "b_only": 0} and "balanced_accuracy_learnable" not in same["metrics"]
    perfect = evaluate.paired_bootstrap(y, y, a, 3)
    assert perfect["metrics"]["balanced_accuracy"]["a_better"] == 1.0
    assert perfect["metrics"]["balanced_accuracy"]["interval"][0] > 0
    with pytest.raises(MelgenreError, match="equal, non-empty rows"):
        evaluate.paired_bootstrap(y, a[:-1], b, 3)


def test_wilson_interval_of_small_counts():
    """Textbook values (Wilson 1927; e.g. 3 of 7 -> 0.158-0.750), and sound at 0 and n of n."""
    assert evaluate.wilson_interval(3, 7) == pytest.approx([0.1582, 0.7495], abs=1e-4)
    assert evaluate.wilson_interval(70, 100) == pytest.approx([0.6042, 0.7811], abs=1e-4)
    low, high = evaluate.wilson_interval(0, 7)
    assert low == pytest.approx(0, abs=1e-12) and high == pytest.approx(0.3543, abs=1e-4)
    assert evaluate.wilson_interval(7, 7) == pytest.approx([0.6457, 1.0], abs=1e-4)
    with pytest.raises(MelgenreError, match="at least one trial"):
        evaluate.wilson_interval(0, 0)
