// plughost dashboard: live counts on the overview (server-sent events, paused
// while the tab is hidden) and "select all" on the jobs list. Plain JavaScript.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", () => {
      document.querySelectorAll("input[type=checkbox][name=id]").forEach((c) => { c.checked = all.checked; });
    });
  }

  const live = document.querySelector("[data-live]");
  if (!live) return;
  let source = null;
  const show = (state) => { live.textContent = state; live.dataset.state = state; };
  const apply = (data) => {
    for (const [key, n] of Object.entries(data.cells)) {
      const cell = document.querySelector(`[data-cell="${key}"]`);
      if (cell) cell.textContent = n;
    }
    for (const key of ["runnable", "waiting", "in_progress"]) {
      const card = document.querySelector(`[data-k="${key}"]`);
      if (card) card.textContent = data[key];
    }
    live.dataset.updated = String(Date.now());
  };
  const open = () => {
    if (source) return;
    source = new EventSource(live.dataset.live);
    source.addEventListener("counts", (e) => { apply(JSON.parse(e.data)); show("live"); });
    source.addEventListener("charts", (e) => {
      const charts = document.getElementById("charts");
      if (charts) charts.innerHTML = e.data;
    });
    source.onerror = () => show("reconnecting");
  };
  const close = () => {
    if (source) { source.close(); source = null; }
    show("paused while hidden");
  };
  document.addEventListener("visibilitychange", () => (document.hidden ? close() : open()));
  if (!document.hidden) open();
});
