// ciq web UI: the live results of a queued or running commit (its page's #live-results).
// Polls /api/repos/{rid}/commits/{sha}/live every second with `after` = the last entry
// seen; shows the first failure as soon as it exists, the counts so far and the failing
// tests; reloads the page when the report lands. Without it the server-rendered page
// still shows what was known when it was loaded. Every text from a test (its id, its
// message) goes in as textContent, never as HTML.
"use strict";

(function () {
  var POLL_MS = 1000;
  // Failing tests listed at most (the report lists them all).
  var MAX_LISTED = 100;
  // Control characters, bidirectional overrides: shown as "?" (as the server does).
  var UNPRINTABLE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;

  function printable(text) {
    return String(text || "").replace(UNPRINTABLE, "?");
  }

  function pill(outcome) {
    var span = document.createElement("span");
    var word = /^[a-z]+$/.test(outcome) ? outcome : "unknown";
    span.className = "pill s-" + word;
    span.textContent = word;
    return span;
  }

  function watch(section) {
    var next = section.dataset.next || "";
    var first = section.querySelector(".first-failure");
    var none = section.querySelector(".no-failure");
    var list = section.querySelector(".live-failing");

    function showFirst(ff) {
      if (!ff || !first.hidden) return;
      first.querySelector(".pill-slot").replaceChildren(pill(ff.outcome));
      first.querySelector(".test-id").textContent = printable(ff.id);
      var message = first.querySelector(".ff-message");
      message.textContent = printable(ff.message);
      message.hidden = !ff.message;
      first.hidden = false;
      if (none) none.hidden = true;
    }

    function showCounts(counts) {
      Array.prototype.forEach.call(section.querySelectorAll("[data-count]"), function (el) {
        var n = counts[el.dataset.count];
        if (typeof n === "number") el.textContent = String(n);
      });
    }

    function addFailing(outcomes) {
      outcomes.forEach(function (o) {
        if (o.outcome !== "failed" && o.outcome !== "error") return;
        if (list.children.length >= MAX_LISTED) return;
        var li = document.createElement("li");
        var id = document.createElement("span");
        id.className = "test-id";
        id.textContent = printable(o.id);
        li.append(pill(o.outcome), " ", id);
        list.append(li);
      });
    }

    function tick() {
      var url = section.dataset.api + (next ? "?after=" + encodeURIComponent(next) : "");
      fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (live) {
          if (live.state === "finished") {
            window.location.reload();
            return true;
          }
          showFirst(live.first_failure);
          showCounts(live.counts);
          addFailing(live.outcomes);
          next = live.next;
          return false;
        })
        .catch(function () { return false; /* away for a moment: try again */ })
        .then(function (done) { if (!done) setTimeout(tick, POLL_MS); });
    }

    setTimeout(tick, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var section = document.getElementById("live-results");
    if (section) watch(section);
  });
})();
