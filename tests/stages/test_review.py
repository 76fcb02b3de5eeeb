"""`rlaif review`: the stratified blind queue, agreement figures, the local server's guards and errors, and the
page driven by keyboard and mouse in a real headless Chromium (verdicts appended to human_labels.jsonl, a restart
resumes, the figures on the page match the file)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from pathlib import Path

import pytest
from browser import DevTools, chromium
from rm_data import write_jsonl

from rlaif.cli import main as cli_main
from rlaif.data.human_labels import load_human_labels
from rlaif.ops import wilson_interval
from rlaif.review import ReviewSession
from rlaif.review.server import ReviewError, start_server
from rlaif.review.session import confidence_bin, left_is_chosen, stratified_sample

PROBS = [0.5, 0.55, 0.65, 0.7, 0.8, 0.85, 0.95, 1.0, 0.58, 0.62, 0.77, 0.93]  # 3 pairs in each confidence bin


def label_rows(n: int = 12) -> list[dict]:
    """Rows like `rlaif label` writes, from a two-member panel: `mini` agrees with the panel, `contra` does not."""
    rows = []
    for i in range(n):
        p = PROBS[i % len(PROBS)]
        rows.append({"id": f"q{i}:0-1", "prompt": f"Question {i} <b>bold?</b>", "chosen": f"Good answer {i}.",
                     "rejected": f"Bad answer {i} <script>document.title='PWNED'</script>", "label_prob": p,
                     "judge": {"judge": "panel(mini,contra)", "prob_a_better": p, "members": {
                         "mini": {"prob_a_better": p, "p_first_better_ab": p, "p_first_better_ba": 1 - p,
                                  "consistent": True},
                         "contra": {"prob_a_better": 1 - p, "p_first_better_ab": 1 - p, "p_first_better_ba": p,
                                    "consistent": True}}}})
    return rows


@pytest.fixture()
def labels(tmp_path) -> Path:
    return Path(write_jsonl(tmp_path / "label" / "preferences.jsonl", label_rows()))


@pytest.fixture()
def labels_dir(tmp_path) -> Path:
    (tmp_path / "label").mkdir()
    return tmp_path


def test_queue_is_stratified_and_blind_order_is_stable(labels_dir, labels):
    session = ReviewSession(labels, labels_dir / "h.jsonl", sample=8, seed=0)
    bins = [confidence_bin(r.label_prob) for r in session.queue]
    assert bins[:4] == [0, 1, 2, 3] and sorted(bins) == [0, 0, 1, 1, 2, 2, 3, 3]  # every prefix spans the bins
    again = stratified_sample(list(session.rows.values()), 8, 0)
    assert [r.id for r in again] == [r.id for r in session.queue]
    sides = [left_is_chosen(0, f"q{i}:0-1") for i in range(12)]
    assert 0 < sum(sides) < 12  # both orders occur; never a function of the judge
    item = session.next_item()["item"]
    assert set(item) == {"id", "prompt", "left", "right"}  # nothing of the judge's verdict before an answer


def test_agreement_figures_by_hand(labels_dir, labels):
    session = ReviewSession(labels, labels_dir / "h.jsonl", sample=12, seed=0)
    queue = session.queue
    # agree on 5 pairs (the judge's winner), overturn 2, call 1 a tie, skip 1
    choices = {}
    for k, row in enumerate(queue[:9]):
        lc = left_is_chosen(0, row.id)
        verdict = "chosen" if k < 5 else "rejected" if k < 7 else "tie" if k == 7 else "skip"
        choice = {"chosen": "left" if lc else "right", "rejected": "right" if lc else "left"}.get(verdict, verdict)
        choices[row.id] = (choice, verdict)
        out = session.record(row.id, choice)
        judge_side = "tie" if row.label_prob == 0.5 else ("left" if lc else "right")
        assert out["judge"]["side"] == judge_side
    stats = session.stats()
    ties = sum(1 for r in queue[:8] if r.label_prob == 0.5)  # the judge's own ties count as the side "tie"
    agree = sum(1 for r in queue[:5] if r.label_prob > 0.5) + sum(1 for r in queue[7:8] if r.label_prob == 0.5)
    assert stats["reviewed"] == 9 and stats["skipped"] == 1 and stats["compared"] == 8
    assert stats["agree"] == agree and stats["agreement"] == pytest.approx(agree / 8)
    assert stats["agreement_ci"] == pytest.approx(list(wilson_interval(agree, 8)), abs=1e-4)
    assert ties <= 2 and -1.0 <= stats["kappa"] <= 1.0
    # `contra` always picks the other answer than the panel: it agrees with the person exactly where they overturned
    contra = stats["members"]["contra"]
    assert contra["compared"] == 8 and contra["agree"] == sum(
        1 for r in queue[5:7] if r.label_prob > 0.5) + sum(1 for r in queue[:8] if r.label_prob == 0.5 and
                                                           choices[r.id][1] == "tie")
    # the file has every verdict, in the AI row's frame, and feeds rm.human_labels
    human = load_human_labels(labels_dir / "h.jsonl")
    assert {i: h.verdict for i, h in human.items()} == {i: v for i, (_, v) in choices.items()}


def request(port: int, method: str, path: str, body: bytes | None = None, host: str | None = None,
            ctype: str = "application/json") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host or f"127.0.0.1:{port}", "Content-Type": ctype}
    conn.request(method, path, body=body, headers=headers)
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, (json.loads(data) if res.getheader("Content-Type") == "application/json" else {})


@pytest.fixture()
def server(labels_dir, labels):
    session = ReviewSession(labels, labels_dir / "label" / "human_labels.jsonl", sample=6, seed=0)
    srv = start_server(session, 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield session, srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_server_guards_and_errors(server):
    session, port = server
    assert session is not None
    item = request(port, "GET", "/api/next")[1]["item"]
    assert request(port, "GET", "/api/next", host="evil.example:80")[0] == 403  # DNS rebinding
    assert request(port, "POST", "/api/verdict", b"{not json")[0] == 400
    assert request(port, "POST", "/api/verdict", json.dumps({"id": item["id"], "choice": "maybe"}).encode())[0] == 400
    assert request(port, "POST", "/api/verdict", json.dumps({"id": "nope", "choice": "left"}).encode())[0] == 404
    assert request(port, "POST", "/api/verdict", b"{}", ctype="text/plain")[0] == 415
    assert request(port, "GET", "/../../etc/passwd")[0] == 404
    # the port is taken now: a second review names it and says what to do
    with pytest.raises(ReviewError, match=f"port {port} on 127.0.0.1 is in use .*--port"):
        start_server(session, port)
    # bound to the loopback address only (the machine's other address, where it has one, gets no answer)
    try:
        other = socket.gethostbyname(socket.gethostname())
    except OSError:
        other = "127.0.0.1"
    if not other.startswith("127."):
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((other, port)) != 0


def test_cli_stats_and_bad_input(labels_dir, labels, capsys, tmp_path):
    write_jsonl(labels_dir / "label" / "human_labels.jsonl", [{"id": "q1:0-1", "verdict": "chosen"},
                                                              {"id": "q2:0-1", "verdict": "skip"}])
    assert cli_main(["review", str(labels_dir), "--stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["reviewed"] == 2 and stats["compared"] == 1 and stats["agree"] == 1
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "x", "prompt": "q", "chosen": "a"}])
    assert cli_main(["review", bad, "--stats"]) == 2
    assert f"{bad}:1: missing field 'rejected'" in capsys.readouterr().err
    assert cli_main(["review", str(tmp_path / "missing.jsonl")]) == 2
    torn = labels_dir / "label" / "human_labels.jsonl"
    torn.write_text(torn.read_text() + '{"id": "q3:0-1", "verd')  # a kill in the middle of a write
    assert cli_main(["review", str(labels_dir), "--stats"]) == 0
    assert json.loads(capsys.readouterr().out)["reviewed"] == 2 and torn.read_text().endswith("\n")


def test_chromium_review_by_keyboard_and_mouse(server, labels_dir, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("Chromium is not installed and cannot be installed here (not root, no sudo): "
                    "apt-get install chromium")
    session, port = server
    out = labels_dir / "label" / "human_labels.jsonl"
    page = DevTools(browser, tmp_path / "profile")
    try:
        page.navigate(f"http://127.0.0.1:{port}/")
        first = page.wait_for("document.getElementById('pair').dataset.id")
        assert page.evaluate("document.getElementById('reveal').hidden") is True  # the verdict is hidden
        assert "judge said" not in page.evaluate("document.body.innerText")
        # answers are text, not markup: the injected script did not run and no element was made from it
        assert page.evaluate("document.title") == "rlaif review: which answer is better?"
        assert page.evaluate("document.querySelectorAll('#pair script, #pair b').length") == 0
        seen = [first]
        for action in (("key", "a"), ("click", "#btn-right"), ("key", "t"), ("key", "s")):
            before = seen[-1]
            if action[0] == "key":
                page.press(action[1], f"Key{action[1].upper()}", ord(action[1].upper()))
            else:
                page.click(action[1])
            seen.append(page.wait_for(f"(() => {{ const id = document.getElementById('pair').dataset.id; "
                                      f"return id !== {json.dumps(before)} && id; }})()"))
        assert page.evaluate("document.getElementById('reveal').hidden") is False
        assert "the judge said" in page.evaluate("document.getElementById('reveal').textContent")
        shown = page.evaluate("document.getElementById('agreement').textContent")
        page.screenshot(tmp_path / "review.png")
        assert (tmp_path / "review.png").stat().st_size > 10_000
    finally:
        page.close()
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == seen[:4] and [r["choice"] for r in rows] == ["left", "right", "tie", "skip"]
    for r in rows:
        lc = left_is_chosen(0, r["id"])
        assert r["left"] == ("chosen" if lc else "rejected")
        expected = {"left": "chosen" if lc else "rejected", "right": "rejected" if lc else "chosen"}
        assert r["verdict"] == expected.get(r["choice"], r["choice"])
    stats = session.stats()
    assert stats["reviewed"] == 4 and stats["compared"] == 3
    assert f"on {stats['agree']} of 3 pairs" in shown
    # a restart (a new server over the same file) resumes at the fifth pair of the same queue
    again = ReviewSession(session.labels, out, sample=6, seed=0)
    nxt = again.next_item()
    assert nxt["done"] == 4 and nxt["item"]["id"] == seen[4] == again.queue[4].id


def test_report_shows_the_human_checks(labels_dir, labels):
    from rlaif.report import write_report

    write_jsonl(labels_dir / "label" / "human_labels.jsonl", [
        {"id": "q1:0-1", "verdict": "chosen", "left": "chosen"}, {"id": "q2:0-1", "verdict": "rejected",
                                                                 "left": "rejected"}])
    page = Path(write_report(labels_dir, None))
    html = page.read_text(encoding="utf-8")
    section = html[html.index('<section id="review">'):]
    section = section[:section.index("</section>")]
    assert "Human spot-checks" in section and "1 of 2" in section and "panel member mini" in section
    summary = json.loads((page.parent / "summary.json").read_text())
    assert summary["human_review"]["agree"] == 1 and summary["human_review"]["compared"] == 2
