"""`benchmarks/publish_comparison.py`: rows labelled by what each run's config.yaml says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from benchmarks.compare.results import read_rows, run_dir
from benchmarks.compare.splice import splice
from benchmarks.compare.table import seed_table

from benchmarks import publish_comparison as publish


def _row(method: str, seed: int, acc: float) -> dict[str, Any]:
    run_id = f"per-budget/n/{method}/seed{seed}"
    return {"view": "per-budget", "net": "n", "method": method, "seed": seed, "budget": 0.5,
            "step_budget": 0, "acc": acc, "run_id": run_id}  # fmt: skip


def _bench(root: Path, runs: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> Path:
    for row, config in runs:
        if config is not None:
            d = run_dir(root, row["run_id"])
            d.mkdir(parents=True, exist_ok=True)
            (d / "config.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.mark.parametrize(
    ("method", "config", "label"),
    [
        ("taperprune", {"price": "static", "width_floor": 0.75}, "taperprune"),
        ("taperprune", {"price": "static", "width_floor": 0.0}, "taperprune_nofloor"),
        ("taperprune", {"price": "static"}, "taperprune_nofloor"),  # before the setting
        ("taperprune", {"price": "static", "width_floor": 0.9}, "taperprune (width_floor 0.9)"),
        ("taperprune_floor", {"price": "static", "width_floor": 0.75}, "taperprune"),
        ("taperprune_floor90", {"price": "static", "width_floor": 0.9}, "taperprune_floor90"),
        ("taperprune", {"price": "macs", "width_floor": 0.75}, "taperprune_marginal_price"),
        ("uniform_width", None, "uniform_width"),
    ],
)
def test_rows_are_labelled_by_the_floor_their_run_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method, config, label
):
    monkeypatch.setitem(publish.DEFAULTS, "width_floor", 0.75)
    row = _row(method, 0, 90.0)
    bench = _bench(tmp_path, [(row, config)])
    assert [r["method"] for r in publish.relabel(bench, [row])] == [label]


@pytest.mark.parametrize(
    ("method", "config", "label"),
    [
        ("taperprune", {"max_pruning_ratio": 0.9}, "taperprune"),
        ("taperprune", {"max_pruning_ratio": 1.0}, "taperprune_nocap"),
        ("taperprune", {}, "taperprune_nocap"),  # before the setting
        ("taperprune", {"max_pruning_ratio": 0.8}, "taperprune (max_pruning_ratio 0.8)"),
        ("taperprune", {"width_floor": 0.75}, "taperprune (width_floor 0.75, max_pruning_ratio 1)"),
        ("taperprune_cap90", {"max_pruning_ratio": 0.9}, "taperprune"),
        ("taperprune_floor", {"width_floor": 0.75, "max_pruning_ratio": 0.9}, "taperprune_floor"),
    ],
)
def test_rows_are_labelled_by_the_cap_their_run_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method, config, label
):
    monkeypatch.setitem(publish.DEFAULTS, "max_pruning_ratio", 0.9)
    row = _row(method, 0, 90.0)
    bench = _bench(tmp_path, [(row, {"price": "static", **config})])
    assert [r["method"] for r in publish.relabel(bench, [row])] == [label]


def test_today_s_defaults_label_today_s_runs_taperprune(tmp_path: Path):
    row = _row("taperprune", 0, 90.0)
    config = {"price": "static", **publish.DEFAULTS}
    assert [r["method"] for r in publish.relabel(_bench(tmp_path, [(row, config)]), [row])] == [
        "taperprune"
    ]


def test_a_cell_two_benches_hold_is_published_once(tmp_path: Path):
    a = [_row("taperprune", 0, 90.0), _row("taperprune", 1, 91.0)]
    b = [_row("taperprune", 1, 95.0), _row("taperprune", 2, 92.0)]
    kept = publish.once(a + b)
    assert [(r["seed"], r["acc"]) for r in kept] == [(0, 90.0), (1, 91.0), (2, 92.0)]


def _acc_row(method: str, seed: int, budget: float, acc: float, view: str = "per-budget"):
    return {"view": view, "net": "n", "method": method, "seed": seed, "budget": budget,
            "step_budget": 0, "acc": acc, "macs": 1, "full_macs": 10, "steps": 5}  # fmt: skip


def test_the_seed_table_shows_each_seed_in_order_and_ours_first():
    rows = [_acc_row("uniform_width", s, 0.5, 89.0 + s) for s in (2, 0, 1)]
    rows += [_acc_row("taperprune", s, b, 90.0 + s) for s in (1, 0) for b in (0.5, 0.25)]
    rows += [_acc_row("tp_l1_global", 0, 0.25, 88.0)]  # one seed: its mean alone
    rows += [_acc_row("tp_taylor", s, 0.25, 80.0 + s) for s in (10, 2)]  # a gap: seeds named
    assert seed_table(rows, "n", "per-budget") == [
        "| method | 50 % | 25 % |",
        "|---|---|---|",
        "| taperprune | 90.50 (90.00/91.00) | 90.50 (90.00/91.00) |",
        "| uniform_width | 90.00 (89.00/90.00/91.00) |  |",
        "| tp_l1_global |  | 88.00 |",
        "| tp_taylor |  | 86.00 (seeds 2/10: 82.00/90.00) |",
    ]
    # The curve view shows taperprune's one run: its per-budget rows.
    curve = seed_table(rows + [_acc_row("uniform_width", 0, 0.5, 80.0, "curve")], "n", "curve")
    assert curve[2:] == ["| taperprune | 90.50 (90.00/91.00) | 90.50 (90.00/91.00) |",
                         "| uniform_width | 80.00 |  |"]  # fmt: skip
    with pytest.raises(ValueError, match="no rows for m in the steps view"):
        seed_table(rows, "m", "steps")


def test_marked_blocks_are_regenerated_and_the_rest_is_kept():
    rows = [_acc_row(m, s, 0.5, a + 0.1 * s) for s in range(3)
            for m, a in (("taperprune", 91.0), ("uniform_width", 89.0))]  # fmt: skip
    doc = (
        "intro\n<!-- bench: seeds n per-budget -->\nstale table\n<!-- /bench -->\nmiddle\n"
        "<!-- bench: headline per-budget -->\n<!-- /bench -->\nend\n"
    )
    text, count = splice(doc, rows)
    assert count == 2
    assert text.startswith("intro\n<!-- bench: seeds n per-budget -->\n| method | 50 % |")
    assert "stale" not in text and "\nmiddle\n" in text and text.endswith("<!-- /bench -->\nend\n")
    assert "| n | 50 % | 91.10 ± 0.10 | uniform_width 89.10 ± 0.10 | +2.00, **ahead** | 3 |" in text
    assert splice(text, rows) == (text, 2)  # regenerating again changes nothing
    with pytest.raises(ValueError, match="bench: seeds n -->: not"):
        splice("<!-- bench: seeds n -->\n<!-- /bench -->", rows)


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        # An opener without its closer must not swallow the prose up to the next block.
        ("<!-- bench: seeds n per-budget -->\nprose\n<!-- bench: seeds n per-budget -->\n"
         "<!-- /bench -->\n", "2 '<!-- bench: … -->' and 1 '<!-- /bench -->' markers, 1 complete"),
        ("a stray closer\n<!-- /bench -->\n", "0 '<!-- bench: … -->' and 1"),
        ("<!-- bench: headline per_budget -->\n<!-- /bench -->", "no rows in the per_budget view"),
        ("<!-- bench: headline per-budget -->\n<!-- /bench -->",
         "no taperprune rows for m in the per-budget view"),
    ],
)  # fmt: skip
def test_a_doc_whose_blocks_cannot_be_filled_is_refused(doc: str, error: str):
    rows = [_acc_row(m, s, 0.5, 90.0 + s) for s in range(2) for m in ("taperprune", "tp_random")]
    rows += [{**_acc_row("uniform_width", 0, 0.5, 80.0), "net": "m"}]  # no taperprune on m
    with pytest.raises(ValueError, match=re.escape(error)):
        splice(doc, rows)


def test_publish_regenerates_the_docs_it_is_given_and_refuses_one_without_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from benchmarks.compare.results import FIELDS, write_rows

    bench, out = tmp_path / "bench", tmp_path / "published"
    methods = (("uniform_width", 89.0), ("tp_l1_global", 88.0))
    rows = [
        {**dict.fromkeys(FIELDS, 1), **_row(m, s, a + 0.1 * s), "run_id": f"{m}{s}"}
        for s in range(3)
        for m, a in methods
    ]
    write_rows(bench / "results.csv", rows)
    doc = tmp_path / "doc.md"
    doc.write_text(
        "a\n<!-- bench: seeds n per-budget from=published -->\nold\n<!-- /bench -->\nb\n"
    )
    monkeypatch.setattr("sys.argv", ["publish", str(bench), "--out", str(out), "--docs", str(doc)])
    publish.main()
    assert "| uniform_width | 89.10 (89.00/89.10/89.20) |" in doc.read_text()
    assert (out / "results.csv").exists() and "old" not in doc.read_text()
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    monkeypatch.setattr(
        "sys.argv", ["publish", str(bench), "--out", str(out), "--docs", str(plain)]
    )
    with pytest.raises(
        SystemExit, match=r"plain.md: no <!-- bench: … --> with from= naming .*published block"
    ):
        publish.main()
    assert plain.read_text() == "no markers\n"
    # A doc that cannot be regenerated stops the publish before anything is written.
    bad, fresh = tmp_path / "bad.md", tmp_path / "fresh"
    bad.write_text("<!-- bench: seeds n steps from=fresh -->\n<!-- /bench -->\n")
    doc.write_text(doc.read_text().replace("from=published", "from=fresh"))
    argv = ["publish", str(bench), "--out", str(fresh), "--docs", str(doc), str(bad)]
    monkeypatch.setattr("sys.argv", argv)
    before = doc.read_text()
    with pytest.raises(SystemExit, match=r"bad.md: <!-- bench: seeds n steps from=fresh -->: no"):
        publish.main()
    assert not fresh.exists() and doc.read_text() == before
    # The main publish fills the blocks without from= and leaves the others.
    monkeypatch.setattr(publish, "MAIN", out.resolve())
    main_doc = tmp_path / "main.md"
    other = before.replace("from=fresh", "from=bench")  # another publish, one that exists
    main_doc.write_text("<!-- bench: means n per-budget -->\nold\n<!-- /bench -->\n" + other)
    argv = ["publish", str(bench), "--out", str(out), "--docs", str(main_doc)]
    monkeypatch.setattr("sys.argv", argv)
    publish.main()
    assert "| uniform_width | **89.10 ± 0.10** |" in main_doc.read_text()
    assert main_doc.read_text().endswith(other)


def test_each_publish_regenerates_only_the_blocks_that_name_it():
    rows = [_acc_row(m, s, 0.5, a + 0.1 * s) for s in range(3)
            for m, a in (("taperprune", 91.0), ("uniform_width", 89.0))]  # fmt: skip
    long = [{**r, "acc": r["acc"] - 5} for r in rows]
    doc = (
        "<!-- bench: means n per-budget -->\nold main\n<!-- /bench -->\n"
        "<!-- bench: means n per-budget from=bench/long -->\nold long\n<!-- /bench -->\n"
    )
    text, count = splice(doc, long, lambda origin: origin == "bench/long")
    assert count == 1 and "old main" in text and "old long" not in text
    assert "| taperprune | **86.10 ± 0.10** |" in text
    assert "| *taperprune − best baseline* | +2.00 vs uniform_width |" in text
    text, count = splice(text, rows)  # the main publish leaves the long block alone
    assert count == 1 and "| taperprune | **91.10 ± 0.10** |" in text and "**86.10" in text
    assert splice(doc, rows, lambda origin: False) == (doc, 0)


@pytest.mark.parametrize(
    ("marker", "error"),
    [
        ("means n per-budget from=a from=b", "at most one from=, naming a directory"),
        ("means n per-budget from=", "at most one from=, naming a directory"),
        ("from=bench/long", "bench: from=bench/long -->: not 'headline VIEW'"),
        # another publish's block is checked too, and named as the doc writes it
        ("meens n per-budget from=x", "bench: meens n per-budget from=x -->: not"),
    ],
)
def test_a_bad_marker_is_named_as_the_doc_writes_it(marker: str, error: str):
    with pytest.raises(ValueError, match=re.escape(error)):
        splice(f"<!-- bench: {marker} -->\n<!-- /bench -->\n", [], lambda origin: False)
    rows = [_acc_row("taperprune", 0, 0.5, 90.0)]
    with pytest.raises(ValueError, match=re.escape("bench: means m curve from=x -->: no rows")):
        splice("<!-- bench: means m curve from=x -->\n<!-- /bench -->\n", rows, lambda o: True)


def test_crlf_docs_stay_crlf_and_trailing_blanks_after_a_marker_are_allowed():
    rows = [_acc_row(m, s, 0.5, 90.0 + s) for s in range(2) for m in ("taperprune", "x")]
    text, count = splice(
        "a\r\n<!-- bench: means n per-budget --> \r\nold\r\n<!-- /bench -->\r\n", rows
    )
    assert count == 1 and "old" not in text
    assert "\n" not in text.replace("\r\n", "")


def test_a_doc_names_a_publish_as_its_links_would(tmp_path: Path):
    docs = publish.MAIN.parent
    benchmarks, readme = docs / "BENCHMARKS.md", docs.parent / "README.md"
    ours = publish.publish_of(benchmarks, publish.MAIN)
    assert ours(None) and not ours("bench/long")
    long = publish.publish_of(benchmarks, publish.MAIN / "long")
    assert long("bench/long") and long("./bench/long/") and not long(None)
    assert publish.publish_of(readme, publish.MAIN / "long")("docs/bench/long")
    with pytest.raises(ValueError, match="from=bench is the main publish: leave from= out"):
        long("bench")
    with pytest.raises(ValueError, match="from=bench/lnog: no such directory next to"):
        long("bench/lnog")
    (tmp_path / "a").mkdir()  # a publish to a directory not made yet is named by its path
    assert publish.publish_of(tmp_path / "a" / "doc.md", tmp_path / "new")("../new")


def test_the_repository_s_docs_are_what_their_rows_regenerate():
    """README.md and docs/BENCHMARKS.md hold the tables their published rows give."""
    for out in (publish.MAIN, publish.MAIN / "long"):
        rows = read_rows(out / "results.csv")
        for doc in (publish.MAIN.parents[1] / "README.md", publish.MAIN.parent / "BENCHMARKS.md"):
            text = doc.read_text(encoding="utf-8")
            assert splice(text, rows, publish.publish_of(doc, out))[0] == text, (doc, out)


def test_a_taperprune_row_without_its_run_config_is_named(tmp_path: Path):
    row = _row("taperprune", 0, 90.0)
    with pytest.raises(SystemExit, match=r"seed0/config.yaml is missing: the row per-budget/n/"):
        publish.relabel(tmp_path, [row])


def test_kept_nets_are_carried_over_as_published_and_not_read_from_the_benches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from benchmarks.compare.results import FIELDS, write_rows

    def full(row: dict[str, Any], net: str) -> dict[str, Any]:
        return {**dict.fromkeys(FIELDS, 1), **row, "net": net}

    bench, out = tmp_path / "bench", tmp_path / "published"
    # The bench's taperprune row of net m has no config.yaml: it must not be read.
    write_rows(bench / "results.csv", [full(_row("tp_random", 0, 80.0), "n"),
                                       full(_row("taperprune", 0, 70.0), "m")])  # fmt: skip
    write_rows(out / "results.csv", [full(_row("taperprune_nocap", 0, 91.0), "m"),
                                     full(_row("tp_random", 0, 50.0), "n")])  # fmt: skip
    monkeypatch.setattr("sys.argv", ["publish", str(bench), "--out", str(out), "--keep", "m"])
    publish.main()
    got = {(r["net"], r["method"], r["acc"]) for r in read_rows(out / "results.csv")}
    assert got == {("n", "tp_random", 80.0), ("m", "taperprune_nocap", 91.0)}
    argv = ["publish", str(bench), "--out", str(out), "--keep", "m", "x"]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit, match="results.csv has no rows of x to keep"):
        publish.main()
