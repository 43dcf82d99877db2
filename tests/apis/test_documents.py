"""Reading manifests: YAML/JSON streams, Lists, files, directories, stdin, and malformed input."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from flowscope.apis import documents
from flowscope.apis.documents import InvalidManifest

POD = """apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  containers:
  - name: c
    image: agnhost
"""


def test_multi_document_yaml_keeps_positions_and_skips_empty_documents() -> None:
    text = (
        "---\n" + POD.format(name="a") + "---\n---\n# only a comment\n---\n" + POD.format(name="b")
    )
    docs, problems = documents.parse_text("pods.yaml", text)
    assert problems == []
    assert [(d.index, d.obj["metadata"]["name"]) for d in docs] == [(1, "a"), (4, "b")]
    assert docs[1].describe() == "pods.yaml document 4 (Pod default/b)"


def test_kind_list_expands_into_items() -> None:
    text = (
        '{"apiVersion": "v1", "kind": "List", "items": [{"kind":'
        ' "Namespace", "apiVersion": "v1", "metadata": {"name":'
        ' "x"}}, {"kind": "Pod", "metadata": {"name": "p",'
        ' "namespace": "x"}}]}'
    )
    docs, problems = documents.parse_text("list.json", text, json_only=True)
    assert problems == []
    assert [d.where() for d in docs] == [
        "list.json document 1 item 1",
        "list.json document 1 item 2",
    ]
    assert docs[1].describe() == "list.json document 1 item 2 (Pod x/p)"


def test_json_stream_of_objects() -> None:
    docs, problems = documents.parse_text("s.json", '{"a": 1}\n{"b": 2}', json_only=True)
    assert problems == [] and [d.obj for d in docs] == [{"a": 1}, {"b": 2}]


def test_malformed_yaml_names_document_line_and_column() -> None:
    text = POD.format(name="ok") + "---\nkind: Pod\nmetadata:\n  name: x\n   bad: : indent\n"
    _, problems = documents.parse_text("pods.yaml", text)
    assert len(problems) == 1
    msg = str(problems[0])
    assert msg.startswith("pods.yaml document 2: invalid YAML: line 13, column")
    assert "mapping values are not allowed" in msg


def test_duplicate_keys_are_an_error_not_silently_overwritten() -> None:
    _, problems = documents.parse_text("dup.yaml", "kind: Pod\nkind: Service\n")
    assert [str(p) for p in problems] == [
        "dup.yaml document 1: invalid YAML: line 2, column 1: key 'kind' already set in map"
    ]


def test_malformed_json_names_line_and_column() -> None:
    _, problems = documents.parse_text("x.json", '{"kind": "Pod",\n "a": }', json_only=True)
    assert str(problems[0]).startswith("x.json document 1: invalid JSON: line 2, column 7:")


def test_dates_stay_strings() -> None:
    docs, _ = documents.parse_text("d.yaml", "metadata:\n  annotations:\n    when: 2024-01-02\n")
    assert docs[0].obj["metadata"]["annotations"]["when"] == "2024-01-02"


def test_load_directory_files_and_stdin(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(POD.format(name="b"))
    (tmp_path / "a.yml").write_text(POD.format(name="a"))
    (tmp_path / "c.json").write_text(
        '{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "c"}}'
    )
    (tmp_path / "notes.txt").write_text("not a manifest")
    docs = documents.load([str(tmp_path), "-"], stdin=io.StringIO(POD.format(name="s")))
    assert [d.obj["metadata"]["name"] for d in docs] == ["a", "b", "c", "s"]
    assert docs[0].source == str(tmp_path / "a.yml")
    assert docs[-1].source == "STDIN"


def test_load_reports_every_bad_source(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(InvalidManifest) as err:
        documents.load([str(tmp_path / "missing.yaml"), str(tmp_path / "empty"), str(bad)])
    text = str(err.value)
    assert f'the path "{tmp_path / "missing.yaml"}" does not exist' in text
    assert "no *.yaml, *.yml, *.json files here" in text
    assert f"{bad} document 1: invalid YAML: line 2" in text
    assert len(err.value.problems) == 3


def test_load_of_nothing_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "e.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(InvalidManifest, match="no objects passed"):
        documents.load([str(empty)])
