"use strict";
// The review page: every text from the labels goes in with textContent, never as HTML.
let current = null;
let busy = false;

function $(id) { return document.getElementById(id); }

function pct(x) { return x === null || x === undefined ? "n/a" : (100 * x).toFixed(0) + " %"; }

function showError(msg) { const e = $("error"); e.textContent = msg; e.hidden = false; }

function row(cells, tag) {
  const tr = document.createElement("tr");
  for (const c of cells) { const td = document.createElement(tag || "td"); td.textContent = c; tr.appendChild(td); }
  return tr;
}

function showStats(s) {
  const box = $("stats");
  box.replaceChildren();
  const p = document.createElement("p");
  p.id = "agreement";
  if (!s.compared) {
    p.textContent = `Reviewed ${s.reviewed} (skipped ${s.skipped}); no compared pair yet.`;
    box.appendChild(p);
    return;
  }
  const ci = s.agreement_ci ? ` (95 % CI ${pct(s.agreement_ci[0])}–${pct(s.agreement_ci[1])})` : "";
  const kappa = s.kappa === null ? "n/a" : s.kappa.toFixed(2);
  p.textContent = `You agree with the judge on ${s.agree} of ${s.compared} pairs: ${pct(s.agreement)}${ci}; ` +
                  `Cohen's kappa ${kappa}. Skipped: ${s.skipped}.`;
  box.appendChild(p);
  if (s.members) {
    const t = document.createElement("table");
    t.appendChild(row(["panel member", "agreement", "95 % CI", "kappa"], "th"));
    for (const [name, m] of Object.entries(s.members)) {
      t.appendChild(row([name, `${m.agree} / ${m.compared} = ${pct(m.agreement)}`,
                         m.agreement_ci ? `${pct(m.agreement_ci[0])}–${pct(m.agreement_ci[1])}` : "n/a",
                         m.kappa === null ? "n/a" : m.kappa.toFixed(2)]));
    }
    box.appendChild(t);
  }
}

async function getJSON(url, options) {
  const r = await fetch(url, options);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

async function loadNext() {
  const next = await getJSON("/api/next");
  $("progress").textContent = `${next.done} of ${next.total} reviewed`;
  current = next.item;
  if (!current) {
    $("pair").hidden = true;
    $("finished").hidden = false;
    return;
  }
  $("prompt").textContent = current.prompt;
  $("left").textContent = current.left;
  $("right").textContent = current.right;
  $("pair").hidden = false;
  $("pair").dataset.id = current.id;
}

async function answer(choice) {
  if (!current || busy) return;
  busy = true;
  try {
    const res = await getJSON("/api/verdict", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({id: current.id, choice: choice}),
    });
    const rev = $("reveal");
    const judge = res.judge.side;
    rev.className = choice === "skip" ? "" : (choice === judge ? "agree" : "disagree");
    const names = Object.entries(res.judge.members || {}).map(([n, s]) => `${n}: ${s}`).join(", ");
    rev.textContent = `Previous pair: you said ${choice}; the judge said ${judge} ` +
                      `(P(its winner better) = ${res.judge.p_chosen})` + (names ? `; panel members: ${names}` : "") + ".";
    rev.hidden = false;
    showStats(res.stats);
    await loadNext();
  } catch (e) {
    showError(`Could not save the answer: ${e.message}. Nothing was lost; try again.`);
  } finally {
    busy = false;
  }
}

const KEYS = {a: "left", arrowleft: "left", b: "right", arrowright: "right", t: "tie", s: "skip"};

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const choice = KEYS[ev.key.toLowerCase()];
  if (choice) { ev.preventDefault(); answer(choice); }
});

for (const b of document.querySelectorAll("button[data-choice]")) {
  b.addEventListener("click", () => answer(b.dataset.choice));
}

(async () => {
  try {
    showStats(await getJSON("/api/stats"));
    await loadNext();
  } catch (e) {
    showError(`Could not reach the review server: ${e.message}`);
  }
})();
