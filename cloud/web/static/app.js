// plantsync web UI: the only script. No library, nothing from the internet.
// - [data-refresh]: re-fetch the element's HTML fragment every data-every seconds
//   (paused while the tab is hidden), so the board and an order's progress stay live.
// - form[data-confirm]: ask before a destructive action.
// - button[data-copy]: copy the value of the element its selector names (the new API
//   token on the account page); the field stays selected if the clipboard is refused.
(function () {
  "use strict";
  function refresher(el) {
    var url = el.getAttribute("data-refresh");
    var every = Math.max(1, parseInt(el.getAttribute("data-every") || "10", 10)) * 1000;
    function tick() {
      if (document.hidden) { return setTimeout(tick, every); }
      fetch(url, {credentials: "same-origin", headers: {"X-Requested-With": "fetch"}})
        .then(function (r) {
          if (r.redirected || r.status === 401) { window.location.reload(); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) {
          if (html !== null && html !== undefined) {
            el.innerHTML = html;
            el.setAttribute("data-refreshed", String(Date.now()));
          }
        })
        .catch(function () { /* offline for a moment: try again next round */ })
        .then(function () { setTimeout(tick, every); });
    }
    setTimeout(tick, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(refresher);
    document.addEventListener("submit", function (ev) {
      var msg = ev.target.getAttribute && ev.target.getAttribute("data-confirm");
      if (msg && !window.confirm(msg)) { ev.preventDefault(); }
    });
    document.querySelectorAll("button[data-copy]").forEach(function (btn) {
      btn.addEventListener("click", function () {
        var field = document.querySelector(btn.getAttribute("data-copy"));
        if (!field) { return; }
        field.focus();
        field.select();
        if (navigator.clipboard) {
          navigator.clipboard.writeText(field.value).then(function () {
            btn.classList.add("copied");
          }, function () { /* not allowed (http): the selected field can be copied by hand */ });
        }
      });
    });
  });
})();
