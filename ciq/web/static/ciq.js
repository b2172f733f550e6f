// ciq web UI: live updates of queued and running commits, sortable tables.
// Loaded from /static only (the Content-Security-Policy allows no inline script);
// every text it inserts comes from the server's escaped HTML or goes in as textContent.
"use strict";

(function () {
  var POLL_MS = 2000;

  function isLive(status) {
    return status === "queued" || status === "running";
  }

  function getJSON(url) {
    return fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); });
  }

  function getText(url) {
    return fetch(url, { cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); });
  }

  // A page of commits: poll the JSON API while a row is queued or running; when a row's
  // status (or the list of commits) changed, swap in the server's rendering of the rows.
  function watchCommits(table) {
    var tbody = table.tBodies[0];

    function rowsLive() {
      return Array.prototype.some.call(tbody.rows, function (r) {
        return isLive(r.dataset.status);
      });
    }

    function shown() {
      return Array.prototype.map.call(tbody.rows, function (r) {
        return r.dataset.sha + " " + r.dataset.status;
      }).join(",");
    }

    function swap(html) {
      var tpl = document.createElement("template");
      tpl.innerHTML = html;
      var fresh = Array.prototype.slice.call(tpl.content.querySelectorAll("tr"));
      var old = Array.prototype.slice.call(tbody.rows);
      var same = fresh.length === old.length && fresh.every(function (r, i) {
        return r.dataset.sha === old[i].dataset.sha;
      });
      if (!same) {
        tbody.replaceChildren.apply(tbody, fresh);
        return;
      }
      fresh.forEach(function (r, i) {
        if (r.dataset.status !== old[i].dataset.status) {
          r.classList.add("changed");
          old[i].replaceWith(r);
        }
      });
    }

    function tick() {
      if (!rowsLive()) return; // nothing queued or running: stop polling
      getJSON(table.dataset.api)
        .then(function (page) {
          var now = page.commits.map(function (c) { return c.commit + " " + c.status; });
          if (now.join(",") === shown()) return null;
          return getText(table.dataset.rows).then(swap);
        })
        .catch(function () { /* server or Redis away for a moment: try again */ })
        .then(function () { setTimeout(tick, POLL_MS); });
    }

    setTimeout(tick, POLL_MS);
  }

  // One commit without a report yet: show its state as it changes, reload when final.
  function watchCommit(banner) {
    var state = banner.querySelector(".state");
    var detail = banner.querySelector(".detail");

    function tick() {
      getJSON(banner.dataset.api)
        .then(function (c) {
          if (c.state === "finished") {
            window.location.reload();
            return true;
          }
          if (c.state === "running" || c.state === "queued") {
            banner.className = "banner s-" + c.state;
            state.textContent = c.state;
            detail.textContent = (c.state === "running"
              ? "on " + (c.worker || "?") + " (attempt " + c.attempts + ")"
              : (c.attempts > 0 ? "again (its run died)" : "waiting for a worker")) +
              "; this page updates itself";
          }
          return false;
        })
        .catch(function () { return false; })
        .then(function (done) { if (!done) setTimeout(tick, POLL_MS); });
    }

    setTimeout(tick, POLL_MS);
  }

  // Click a header with data-sort to sort by that column (again to reverse).
  function sortable(table) {
    Array.prototype.forEach.call(table.querySelectorAll("th[data-sort]"), function (th) {
      th.tabIndex = 0;
      function sort() {
        var numeric = th.dataset.sort === "num";
        var current = th.getAttribute("aria-sort");
        // First click: longest durations first, names A to Z; then reverse.
        var down = current ? current === "ascending" : numeric;
        var col = th.cellIndex;
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        function key(row) {
          var cell = row.cells[col];
          var value = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent;
          return numeric ? parseFloat(value) || 0 : value.trim().toLowerCase();
        }
        rows.sort(function (a, b) {
          var x = key(a), y = key(b);
          var order = x < y ? -1 : x > y ? 1 : 0;
          return down ? -order : order;
        });
        Array.prototype.forEach.call(table.querySelectorAll("th[aria-sort]"), function (h) {
          h.removeAttribute("aria-sort");
        });
        th.setAttribute("aria-sort", down ? "descending" : "ascending");
        body.replaceChildren.apply(body, rows);
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var commits = document.getElementById("commits");
    if (commits) watchCommits(commits);
    var live = document.getElementById("live");
    if (live) watchCommit(live);
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), sortable);
  });
})();
