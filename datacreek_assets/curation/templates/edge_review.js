// The review page's keys and buttons: each decision is a PATCH of the edge at the version the
// page showed (409 when someone decided first), sent with the sign-in cookie and the header the
// server asks of cookie-authenticated changes. No front-end build: this file is what runs.
(function () {
  "use strict";
  const status = document.getElementById("status-line");
  const say = (text, bad) => { status.textContent = text; status.className = bad ? "error" : ""; };
  const headers = { "Content-Type": "application/json", "X-Requested-With": "datacreek" };
  const undoStack = [];

  async function send(method, url, body) {
    const response = await fetch(url, { method, headers, body: body ? JSON.stringify(body) : undefined,
                                         credentials: "same-origin" });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error((data.error && data.error.message) || response.statusText);
      error.currentVersion = response.headers.get("X-Current-Version");
      throw error;
    }
    return data;
  }

  // -- the queue ---------------------------------------------------------------
  const rows = Array.from(document.querySelectorAll("#queue tr.edge"));
  let current = rows.length ? 0 : -1;
  const select = (i) => {
    if (!rows.length) return;
    current = Math.max(0, Math.min(rows.length - 1, i));
    rows.forEach((r, k) => r.classList.toggle("selected", k === current));
    rows[current].scrollIntoView({ block: "nearest" });
  };

  async function decide(row, decision) {
    const body = { version: Number(row.dataset.version), decision };
    if (decision === "edit") {
      const predicate = window.prompt("New predicate for this edge:", row.querySelector(".predicate").textContent);
      if (!predicate) return;
      body.predicate = predicate;
    }
    if (decision === "reject") body.reason = "rejected in the review page";
    try {
      const entry = await send("PATCH", "/api/v1/edges/" + encodeURIComponent(row.dataset.id), body);
      row.dataset.version = entry.version;
      row.classList.remove("accept", "reject", "edit");
      row.classList.add("decided", decision);
      row.querySelector(".outcome").textContent = decision;
      if (entry.after && entry.after.predicate) row.querySelector(".predicate").textContent = entry.after.predicate;
      undoStack.push({ entry: entry.id, row });
      say(decision + " " + row.dataset.id + " (decision #" + entry.id + ", u to undo)");
      if (rows[current] === row) select(current + 1);
    } catch (err) {
      // someone decided first: the row now names the version there is, so a second look can decide again
      if (err.currentVersion !== null && err.currentVersion !== undefined) row.dataset.version = err.currentVersion;
      say(err.message + (err.currentVersion ? " (reload to see their decision)" : ""), true);
    }
  }

  async function undoLast() {
    const last = undoStack.pop();
    if (!last) { say("nothing to undo on this page"); return; }
    try {
      const entry = await send("POST", "/api/v1/repairs/" + last.entry + "/undo");
      last.row.dataset.version = entry.version;
      last.row.classList.remove("decided", "accept", "reject", "edit");
      last.row.querySelector(".outcome").textContent = "";
      if (entry.after && entry.after.predicate) last.row.querySelector(".predicate").textContent = entry.after.predicate;
      say("undid decision #" + last.entry);
    } catch (err) { say(err.message, true); undoStack.push(last); }
  }

  rows.forEach((row, i) => {
    row.addEventListener("click", () => select(i));
    for (const d of ["accept", "reject", "edit"]) {
      row.querySelector("button." + d).addEventListener("click", (ev) => { ev.stopPropagation(); select(i); decide(row, d); });
    }
  });

  // -- the log -----------------------------------------------------------------
  document.querySelectorAll("#log tr.entry button.undo").forEach((button) => {
    button.addEventListener("click", async () => {
      const row = button.closest("tr");
      try {
        const entry = await send("POST", "/api/v1/repairs/" + row.dataset.entry + "/undo");
        button.replaceWith(document.createTextNode("undone"));
        say("undid decision #" + row.dataset.entry + " (now #" + entry.id + "); reload to see it");
      } catch (err) { say(err.message, true); }
    });
  });

  document.addEventListener("keydown", (ev) => {
    if (ev.target.closest && ev.target.closest("input, select, textarea") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const go = (id) => { const a = document.getElementById(id); if (a) window.location = a.href; };
    const row = rows[current];
    switch (ev.key) {
      case "j": select(current + 1); break;
      case "k": select(current - 1); break;
      case "a": if (row) decide(row, "accept"); break;
      case "r": if (row) decide(row, "reject"); break;
      case "e": if (row) decide(row, "edit"); break;
      case "u": undoLast(); break;
      case "n": go("next"); break;
      case "p": go("previous"); break;
      case "/": { const q = document.getElementById("q"); if (q) { ev.preventDefault(); q.focus(); } break; }
      default: return;
    }
  });
  select(0);
})();
