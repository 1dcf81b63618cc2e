// pg-durable ui: live refresh. Every few seconds the page is fetched again and its live
// region (the element with data-live="<seconds>") is swapped for the new one. The new HTML is
// parsed by DOMParser, which runs no script in it; forms outside the region are left alone.
"use strict";

(function () {
  const region = () => document.querySelector("[data-live]");
  const seconds = Number(region() ? region().dataset.live : 0);
  if (!(seconds > 0)) return;

  const control = document.querySelector(".live-control");
  const toggle = document.getElementById("live-toggle");
  const state = document.getElementById("live-state");
  const key = "pg-durable-ui-live";
  control.hidden = false;
  toggle.checked = localStorage.getItem(key) !== "off";
  toggle.addEventListener("change", () => {
    localStorage.setItem(key, toggle.checked ? "on" : "off");
    if (toggle.checked) schedule(0);
  });

  let timer = null;
  function schedule(delay) {
    clearTimeout(timer);
    timer = setTimeout(refresh, delay);
  }

  async function refresh() {
    if (!toggle.checked) return;
    const current = region();
    try {
      const response = await fetch(location.href, { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) {
        state.textContent = "refresh failed: HTTP " + response.status;
        schedule(seconds * 1000);
        return;
      }
      const fresh = new DOMParser()
        .parseFromString(await response.text(), "text/html")
        .querySelector("[data-live]");
      if (fresh && current) {
        // Keep open what the reader opened (results, the explain text).
        const open = new Set(
          Array.from(current.querySelectorAll("details[id][open]"), (d) => d.id)
        );
        fresh.querySelectorAll("details[id]").forEach((d) => {
          if (open.has(d.id)) d.open = true;
        });
        current.replaceWith(document.adoptNode(fresh));
      }
      state.textContent = "updated " + new Date().toLocaleTimeString();
      if (fresh && fresh.dataset.live === "0") {
        // Finished: nothing will change any more, and nothing is left to act on.
        document.querySelectorAll("[data-while-running]").forEach((e) => e.remove());
        state.textContent = "finished";
        return;
      }
    } catch (err) {
      state.textContent = "refresh failed: " + err.message;
    }
    schedule(seconds * 1000);
  }

  schedule(seconds * 1000);
})();
