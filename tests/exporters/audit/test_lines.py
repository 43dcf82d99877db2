"""What one audit line holds: Hubble's JSON, the key, redaction, the field mask, the filters."""

from __future__ import annotations

import json

import pytest

from exporters.audit import KEY_FIELD, KIND, AuditExporter
from exporters.audit.fieldmask import apply_mask, mask_tree
from exporters.audit.redact import REDACTED, Redaction, redact_flow, redact_url
from exporters.exporter import ConfigError, ExportBatch, record_key
from flowscope.flow.model import Verdict, record_from_json
from tests.exporters.otel.flows import dns_response, http_request, http_response, lost, tcp_flow


def test_redact_url() -> None:
    url = "http://user:pw@db.prod:8080/orders?token=s3cret&id=7#frag"
    assert redact_url(url, True, True) == f"http://user:{REDACTED}@db.prod:8080/orders"
    assert redact_url(url, False, True) == (
        f"http://user:{REDACTED}@db.prod:8080/orders?token=s3cret&id=7#frag"
    )
    assert redact_url(url, True, False) == "http://user:pw@db.prod:8080/orders"
    assert redact_url("/plain/path", True, True) == "/plain/path"


def test_redact_flow_by_default_hides_secrets_and_keeps_the_rest() -> None:
    d = http_request().to_dict()
    out = redact_flow(d, Redaction())
    headers = {h["key"]: h["value"] for h in out["l7"]["http"]["headers"]}
    assert headers == {"Authorization": REDACTED, "Cookie": REDACTED, "User-Agent": "curl/8.7.1"}
    assert out["l7"]["http"]["url"] == f"http://user:{REDACTED}@db.prod:8080/orders"
    assert d["l7"]["http"]["headers"][0]["value"] == "Bearer MY_TOKEN"  # the input is kept
    resp = redact_flow(http_response().to_dict(), Redaction())
    assert resp["l7"]["http"]["headers"] == [{"key": "Set-Cookie", "value": REDACTED}]


def test_redaction_configurable() -> None:
    d = http_request().to_dict()
    assert redact_flow(d, Redaction(enabled=False)) == d
    out = redact_flow(d, Redaction(headers=("user-agent",), url_query=False, url_userinfo=False))
    headers = {h["key"]: h["value"] for h in out["l7"]["http"]["headers"]}
    assert headers["Authorization"] == "Bearer MY_TOKEN"
    assert headers["User-Agent"] == REDACTED
    assert out["l7"]["http"]["url"] == d["l7"]["http"]["url"]


def test_field_mask() -> None:
    d = tcp_flow(1).to_dict()
    tree = mask_tree(["verdict", "IP.source", "source.pod_name", "l4.TCP"])
    assert apply_mask(d, tree) == {
        "verdict": "FORWARDED",
        "IP": {"source": "10.0.1.5"},
        "source": {"pod_name": "web-1"},
        "l4": {"TCP": d["l4"]["TCP"]},
    }
    assert apply_mask(d, mask_tree(["IP.source", "IP"])) == {"IP": d["IP"]}  # the wider wins
    assert apply_mask(d, mask_tree(["IP", "IP.source"])) == {"IP": d["IP"]}
    assert apply_mask(d, {}) == d


def _config(tmp_path, **over):
    return KIND.parse({"path": str(tmp_path / "audit.jsonl"), **over}, "audit")


async def _lines(tmp_path, records, keys=(), **over) -> list[dict]:
    exp = KIND.build(_config(tmp_path, **over))
    await exp.start()
    await exp.export(ExportBatch(tuple(records), keys=tuple(keys)))
    await exp.flush()
    await exp.close()
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


async def test_lines_are_hubble_json_with_a_key(tmp_path) -> None:
    records = [tcp_flow(1), lost(n=3)]
    keys = [record_key("n1", 7, 100), record_key("n1", 7, 101)]
    lines = await _lines(tmp_path, records, keys)
    assert [line[KEY_FIELD] for line in lines] == ["n1:7:100", "n1:7:101"]
    for line, record in zip(lines, records, strict=True):
        del line[KEY_FIELD]
        assert line == json.loads(record.to_json())  # exactly what hubble observe -o json prints
        assert record_from_json(line) == record


async def test_without_keys_the_key_is_a_hash_of_the_line(tmp_path) -> None:
    a = await _lines(tmp_path / "a", [tcp_flow(1), tcp_flow(2)])
    b = await _lines(tmp_path / "b", [tcp_flow(1)])
    assert a[0][KEY_FIELD] == b[0][KEY_FIELD]  # the same record again: the same key
    assert a[0][KEY_FIELD] != a[1][KEY_FIELD]
    assert a[0][KEY_FIELD].startswith("sha256:")


async def test_allow_and_deny_in_observes_language(tmp_path) -> None:
    records = [
        tcp_flow(1),
        tcp_flow(2, verdict=Verdict.DROPPED),
        dns_response(3, node="n2"),  # not from web: allowed by its node
        http_request(4),
        dns_response(5, node="n1"),  # neither from web nor on n2
        lost(),
    ]
    lines = await _lines(
        tmp_path,
        records,
        allow=["--from-pod default/web", {"node_name": ["n2"]}],
        deny=["--verdict DROPPED", "--protocol sctp"],
    )
    times = [line["time"] for line in lines if "flow" in line]
    # the drop is denied; the lost event always passes
    assert times == [json.loads(r.to_json())["time"] for r in (records[0], records[2], records[3])]
    assert sum("lost_events" in line for line in lines) == 1


async def test_redaction_and_mask_in_lines(tmp_path) -> None:
    lines = await _lines(tmp_path, [http_request()], field_mask=["l7.http", "verdict"])
    (line,) = lines
    assert set(line["flow"]) == {"l7", "verdict"}
    assert "MY_TOKEN" not in json.dumps(line)
    assert "s3cret" not in json.dumps(line)


async def test_reconfigure_in_place_or_not(tmp_path) -> None:
    exp = KIND.build(_config(tmp_path))
    await exp.start()
    assert await exp.reconfigure(_config(tmp_path, deny=["--verdict FORWARDED"]))
    await exp.export(ExportBatch((tcp_flow(1), tcp_flow(2, verdict=Verdict.DROPPED))))
    await exp.flush()
    assert not await exp.reconfigure(_config(tmp_path, rotate={"max_mb": 1}))
    await exp.close()
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert json.loads(line)["flow"]["verdict"] == "DROPPED"


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ({"rotate": {"max_mbb": 1}}, "audit.rotate.max_mbb", "unknown field"),
        ({"rotate": {"max_files": 0}}, "audit.rotate.max_files", "greater than or equal to 1"),
        ({"allow": ["--verdict NOPE"]}, "audit.allow[0]", "not a verdict"),
        ({"allow": ["--verdikt X"]}, "audit.allow[0]", "unrecognized"),
        ({"deny": [{"source_pood": ["x"]}]}, "audit.deny[0]", "source_pood"),
        ({"deny": ["--not --verdict DROPPED"]}, "audit.deny[0]", "under allow"),
        ({"field_mask": ["IP.sauce"]}, "audit.field_mask[0]", "not a Flow field path"),
        ({"redact": {"headerz": []}}, "audit.redact.headerz", "unknown field"),
    ],
)
def test_bad_config_names_the_field(tmp_path, raw, field, message) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        _config(tmp_path, **raw)
    assert e.value.field == field


def test_path_is_required() -> None:
    with pytest.raises(ConfigError) as e:
        KIND.parse({}, "audit")
    assert e.value.field == "audit.path"


async def test_unwritable_path_fails_at_start(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    exp = AuditExporter(KIND.parse({"path": str(tmp_path / "file" / "audit.jsonl")}, "audit"))
    with pytest.raises(Exception, match="cannot open"):
        await exp.start()
