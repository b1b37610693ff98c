/* flask-bgjobs dashboard: live refresh of the overview, the job page and the log viewer.
 *
 * The pages are complete without this file; it only keeps them current. It polls the
 * dashboard's own JSON API (URLs come from data-* attributes on <body>), pauses while the
 * tab is hidden, and writes every value with textContent or setAttribute: never innerHTML,
 * so data is always text. No inline code anywhere, as the Content-Security-Policy requires.
 */
(function () {
  "use strict";

  var body = document.body;
  var POLL_MS = 2000;
  // Server time minus browser time, so elapsed times do not depend on the browser's clock.
  var skew = (parseFloat(body.getAttribute("data-server-now")) || Date.now() / 1000) - Date.now() / 1000;

  function now() {
    return Date.now() / 1000 + skew;
  }

  function duration(seconds) {
    if (!isFinite(seconds)) return "—";
    seconds = Math.max(0, seconds);
    if (seconds < 10) return seconds.toFixed(1) + " s";
    var whole = Math.floor(seconds);
    if (whole < 60) return whole + " s";
    var minutes = Math.floor(whole / 60);
    var secs = whole % 60;
    if (minutes < 60) return minutes + " min " + (secs < 10 ? "0" : "") + secs + " s";
    var hours = Math.floor(minutes / 60);
    minutes = minutes % 60;
    if (hours < 24) return hours + " h " + (minutes < 10 ? "0" : "") + minutes + " min";
    return Math.floor(hours / 24) + " d " + (hours % 24) + " h";
  }

  /* A queue's oldest wait, coarsely; the same as present.waited() on the server. */
  function waited(seconds) {
    if (seconds === null || !isFinite(seconds)) return "—";
    var whole = Math.floor(Math.max(0, seconds));
    if (whole < 60) return whole + " s";
    var minutes = Math.floor(whole / 60);
    if (minutes < 60) return minutes + " min";
    var hours = Math.floor(minutes / 60);
    minutes = minutes % 60;
    if (hours < 24) return hours + " h " + (minutes < 10 ? "0" : "") + minutes + " min";
    return Math.floor(hours / 24) + " d " + (hours % 24) + " h";
  }

  function parseIso(text) {
    return text ? Date.parse(text) / 1000 : NaN;
  }

  function $(selector, root) {
    return (root || document).querySelector(selector);
  }

  function $all(selector, root) {
    return Array.prototype.slice.call((root || document).querySelectorAll(selector));
  }

  function setText(el, text) {
    if (el && el.textContent !== text) el.textContent = text;
  }

  /* Text from a job, as the server's security.printable() renders it on the pages: control
     characters (C0, DEL, C1), bidi controls, line and paragraph separators and lone
     surrogates become visible escapes such as \x1b or \u2028. The "u" flag makes a
     surrogate pair one character, so only a lone surrogate matches. Keep the two in step. */
  var UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]/gu;
  var NAMED_ESCAPES = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };

  function printable(text) {
    return String(text).replace(UNPRINTABLE, function (c) {
      if (NAMED_ESCAPES[c]) return NAMED_ESCAPES[c];
      var code = c.charCodeAt(0);
      var hex = code.toString(16);
      return code <= 0xff ? "\\x" + ("0" + hex).slice(-2) : "\\u" + ("000" + hex).slice(-4);
    });
  }

  // -- the "live" indicator and polling ---------------------------------------------------

  var live = $("[data-live]");
  var liveText = $("[data-live-text]");

  function showLive(state, text) {
    if (!live) return;
    live.hidden = false;
    live.classList.toggle("paused", state === "paused");
    live.classList.toggle("offline", state === "offline");
    setText(liveText, text);
  }

  function getJson(url) {
    return fetch(url, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
      cache: "no-store",
    }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    });
  }

  /* Run `task` (returns a promise) every POLL_MS while the tab is visible; once more as soon
     as it becomes visible again. Failures show as "offline" and never reach the console. */
  function poll(task, label) {
    var timer = null;
    var busy = false;
    var stopped = false;

    function schedule() {
      clearTimeout(timer);
      timer = setTimeout(tick, POLL_MS);
    }

    function tick() {
      if (stopped) return;
      if (document.hidden) {
        showLive("paused", "paused");
        return; // visibilitychange restarts it
      }
      if (busy) return schedule();
      busy = true;
      task()
        .then(function () {
          showLive("live", label || "live");
        })
        .catch(function () {
          showLive("offline", "offline, retrying");
        })
        .then(function () {
          busy = false;
          if (!stopped) schedule();
        });
    }

    document.addEventListener("visibilitychange", function () {
      if (stopped) return;
      if (document.hidden) {
        clearTimeout(timer);
        showLive("paused", "paused");
      } else {
        tick();
      }
    });
    showLive("live", label || "live");
    schedule();
    return {
      stop: function () {
        stopped = true;
        clearTimeout(timer);
      },
      now: tick,
    };
  }

  // -- elapsed times that tick every second -------------------------------------------------

  function tickElapsed() {
    $all("[data-elapsed-since]").forEach(function (el) {
      var since = parseFloat(el.getAttribute("data-elapsed-since"));
      if (isFinite(since)) setText(el, duration(now() - since));
    });
  }

  if ($("[data-elapsed-since]") || body.getAttribute("data-page") === "overview") {
    setInterval(function () {
      if (!document.hidden) tickElapsed();
    }, 1000);
  }

  // -- progress bars ------------------------------------------------------------------------

  function setProgress(root, value, message) {
    var bar = $("[data-field=progress]", root);
    var pct = $("[data-field=progress_pct]", root);
    var msg = $("[data-field=progress_message]", root);
    if (bar) {
      if (value === null || value === undefined) {
        bar.removeAttribute("value"); // indeterminate until the job reports
        bar.setAttribute("aria-label", "progress not reported yet");
        setText(pct, "–");
      } else {
        bar.value = value;
        bar.setAttribute("aria-label", Math.round(value) + " percent");
        setText(pct, Math.round(value) + "%");
      }
    }
    if (msg) setText(msg, printable(message || ""));
  }

  // -- overview -----------------------------------------------------------------------------

  var SVG = "http://www.w3.org/2000/svg";

  function niceCeiling(value) {
    var step = 1;
    for (;;) {
      for (var i = 0, m = [1, 2, 5]; i < m.length; i++) {
        if (step * m[i] >= value) return step * m[i];
      }
      step *= 10;
    }
  }

  function svgEl(name, attrs) {
    var el = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (key) {
      el.setAttribute(key, attrs[key]);
    });
    return el;
  }

  // Same geometry as present.chart() on the server.
  function drawChart(svg, throughput) {
    var width = parseFloat(svg.getAttribute("data-width"));
    var height = parseFloat(svg.getAttribute("data-height"));
    var n = Math.max(1, throughput.length);
    var peak = 0;
    var totalOk = 0;
    var totalBad = 0;
    throughput.forEach(function (b) {
      peak = Math.max(peak, b.succeeded + b.failed);
      totalOk += b.succeeded;
      totalBad += b.failed;
    });
    var top = niceCeiling(peak);
    var slot = width / n;
    var barWidth = Math.max(1, slot * 0.78);
    var group = $("[data-bars]", svg);
    var bars = document.createDocumentFragment();
    throughput.forEach(function (b, i) {
      var hOk = (height * b.succeeded) / top;
      var hBad = (height * b.failed) / top;
      var x = (i * slot + (slot - barWidth) / 2).toFixed(2);
      var g = svgEl("g");
      var title = svgEl("title");
      title.textContent =
        String(b.at).slice(11, 16) + " UTC: " + b.succeeded + " succeeded, " + b.failed + " failed";
      g.appendChild(title);
      g.appendChild(svgEl("rect", { class: "bar-ok", x: x, y: (height - hOk).toFixed(2), width: barWidth.toFixed(2), height: hOk.toFixed(2) }));
      g.appendChild(svgEl("rect", { class: "bar-bad", x: x, y: (height - hOk - hBad).toFixed(2), width: barWidth.toFixed(2), height: hBad.toFixed(2) }));
      bars.appendChild(g);
    });
    while (group.firstChild) group.removeChild(group.firstChild);
    group.appendChild(bars);
    setText($("[data-chart-top]", svg), top + " per minute");
    setText($("[data-chart-total=succeeded]"), String(totalOk));
    setText($("[data-chart-total=failed]"), String(totalBad));
  }

  function splitName(className) {
    var dot = className.lastIndexOf(".");
    return dot < 0 ? ["", className] : [className.slice(0, dot + 1), className.slice(dot + 1)];
  }

  // A row (or list item) cloned from a <template>, with the job's link and name filled in.
  function jobRow(template, job) {
    var row = template.content.firstElementChild.cloneNode(true);
    var url = body.getAttribute("data-job-url") + job.id;
    var parts = splitName(printable(job.class_name));
    row.setAttribute("data-job-id", String(job.id));
    var link = $("[data-slot=link]", row);
    link.href = url;
    link.textContent = "#" + job.id;
    $("[data-slot=name-link]", row).href = url;
    setText($("[data-slot=module]", row), parts[0]);
    setText($("[data-slot=class]", row), parts[1]);
    setText($("[data-slot=method]", row), printable(job.method_name));
    return row;
  }

  function runningRow(template, job) {
    var row = jobRow(template, job);
    setText($("[data-slot=attempts]", row), job.attempts + "/" + job.max_attempts);
    setText($("[data-slot=runner]", row), printable(job.runner_id || "—") + (job.pid ? " · pid " + job.pid : ""));
    return row;
  }

  function updateRunning(data) {
    var tbody = $("[data-running]");
    var template = $("template[data-running-row]");
    if (!tbody || !template) return;
    var existing = {};
    $all("tr[data-job-id]", tbody).forEach(function (tr) {
      existing[tr.getAttribute("data-job-id")] = tr;
    });
    var rows = document.createDocumentFragment();
    data.jobs.forEach(function (job) {
      // Keep a row that is already there, so its progress bar animates instead of jumping.
      var row = existing[String(job.id)] || runningRow(template, job);
      setProgress(row, job.progress, job.progress_message);
      var since = parseIso(job.started_at);
      var elapsed = $("[data-elapsed-since]", row);
      if (elapsed && isFinite(since)) {
        elapsed.setAttribute("data-elapsed-since", String(since));
        setText(elapsed, duration(now() - since));
      }
      rows.appendChild(row);
    });
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    tbody.appendChild(rows);
    $("[data-running-empty]").hidden = data.jobs.length > 0;
    setText($("[data-running-count]"), String(data.total));
  }

  function shorten(text, limit) {
    return text.length <= limit ? text : text.slice(0, limit - 1) + "…";
  }

  function updateFailures(data) {
    var list = $("[data-failures]");
    var template = $("template[data-failure-row]");
    if (!list || !template) return;
    var items = document.createDocumentFragment();
    data.jobs.forEach(function (job) {
      var item = jobRow(template, job);
      var finished = parseIso(job.finished_at);
      setText($("[data-slot=when]", item), isFinite(finished) ? duration(now() - finished) + " ago" : "");
      setText($("[data-slot=error]", item), shorten(printable(job.error || "failed"), 160));
      items.appendChild(item);
    });
    while (list.firstChild) list.removeChild(list.firstChild);
    list.appendChild(items);
    $("[data-failures-empty]").hidden = data.jobs.length > 0;
  }

  function updateStats(data) {
    var total = 0;
    Object.keys(data.counts).forEach(function (status) {
      total += data.counts[status];
      setText($('[data-count="' + status + '"]'), String(data.counts[status]));
    });
    setText($("[data-total-jobs]"), String(total));
    var svg = $("svg[data-chart]");
    if (svg) drawChart(svg, data.throughput);
  }

  function overview() {
    var statsUrl = body.getAttribute("data-api-stats");
    var runningUrl = body.getAttribute("data-api-running");
    var failedUrl = body.getAttribute("data-api-failed");
    var failed = $("[data-failed-count]");
    var lastFailed = failed ? failed.textContent : null;
    poll(function () {
      return Promise.all([getJson(statsUrl), getJson(runningUrl)]).then(function (results) {
        updateStats(results[0]);
        updateRunning(results[1]);
        var count = String(results[0].counts.failed);
        if (count === lastFailed) return null;
        // The failed count moved: the latest failures changed too.
        return getJson(failedUrl).then(function (data) {
          updateFailures(data);
          setText(failed, count);
          lastFailed = count;
        });
      });
    });
  }

  // -- job page -----------------------------------------------------------------------------

  function jobPage() {
    if (!body.hasAttribute("data-follow-job")) return;
    var url = body.getAttribute("data-api-job");
    var status = body.getAttribute("data-status");
    var attempts = body.getAttribute("data-attempts");
    var poller = poll(function () {
      return getJson(url).then(function (job) {
        if (job.status !== status || String(job.attempts) !== attempts) {
          // A new status or attempt changes most of the page: render it afresh.
          poller.stop();
          window.location.reload();
          return;
        }
        setProgress(document, job.progress, job.progress_message);
      });
    });
  }

  // -- queues page --------------------------------------------------------------------------

  function queuesPage() {
    var url = body.getAttribute("data-api-queues");
    var rows = $all("tr[data-queue]");
    if (!url) return;
    var poller = poll(function () {
      return getJson(url).then(function (data) {
        // Both lists are sorted by name. A queue that came or went, or a pause or resume from
        // elsewhere, changes the rows and their buttons: render the page afresh. (Names are
        // not compared: one an edited row made unprintable is shown escaped on the page.)
        var changed =
          data.queues.length !== rows.length ||
          data.queues.some(function (q, i) {
            return String(q.paused) !== rows[i].getAttribute("data-paused");
          });
        if (changed) {
          poller.stop();
          window.location.reload();
          return;
        }
        data.queues.forEach(function (q, i) {
          setText($("[data-field=pending]", rows[i]), String(q.pending));
          setText($("[data-field=running]", rows[i]), String(q.running));
          var wait = $("[data-field=waited]", rows[i]);
          setText(wait, waited(q.oldest_waiting_seconds));
          if (q.oldest_waiting_seconds === null) wait.removeAttribute("title");
          else wait.setAttribute("title", duration(q.oldest_waiting_seconds) + " since it fell due");
        });
      });
    });
  }

  // -- log viewer ---------------------------------------------------------------------------

  function logEntry(entry) {
    var div = document.createElement("div");
    div.className = "entry lvl-" + String(entry.level || "none").toLowerCase();
    if (entry.at) {
      var ts = document.createElement("span");
      ts.className = "ts";
      ts.textContent = entry.at;
      div.appendChild(ts);
      div.appendChild(document.createTextNode(" "));
    }
    if (entry.level) {
      var lvl = document.createElement("span");
      lvl.className = "lvl";
      lvl.textContent = entry.level;
      div.appendChild(lvl);
      div.appendChild(document.createTextNode(" "));
    }
    var msg = document.createElement("span");
    msg.className = "msg";
    msg.textContent = entry.message;
    div.appendChild(msg);
    entry.lines.forEach(function (line) {
      var more = document.createElement("span");
      more.className = "more";
      more.textContent = line;
      div.appendChild(more);
    });
    return div;
  }

  function logsPage() {
    var box = $("[data-log]");
    var toggle = $("[data-follow]");
    if (!box || !toggle) return;
    var url = body.getAttribute("data-api-logs");
    var poller = null;
    var lastKey = null;
    var lastMatched = parseInt(($("[data-log-matched]") || {}).textContent, 10) || 0;

    function keyOf(data) {
      var last = data.entries[data.entries.length - 1];
      return data.matched + "|" + (last ? last.at + last.message + last.lines.length : "");
    }

    function refresh() {
      return getJson(url).then(function (data) {
        var key = keyOf(data);
        if (key === lastKey) return;
        var atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 40;
        var before = box.children.length;
        var fragment = document.createDocumentFragment();
        data.entries.forEach(function (entry) {
          fragment.appendChild(logEntry(entry));
        });
        while (box.firstChild) box.removeChild(box.firstChild);
        box.appendChild(fragment);
        if (lastKey !== null && data.entries.length >= before) {
          // Mark what arrived since the last poll.
          var added = Math.min(data.entries.length, Math.max(0, data.matched - lastMatched));
          for (var i = box.children.length - added; i < box.children.length; i++) {
            if (i >= 0) box.children[i].classList.add("fresh");
          }
        }
        lastMatched = data.matched;
        lastKey = key;
        setText($("[data-log-shown]"), String(data.entries.length));
        setText($("[data-log-matched]"), String(data.matched));
        if (atBottom || toggle.checked) box.scrollTop = box.scrollHeight;
      });
    }

    function setFollow(on) {
      var address = new URL(window.location.href);
      if (on) address.searchParams.set("follow", "1");
      else address.searchParams.delete("follow");
      window.history.replaceState(null, "", address.toString());
      if (on && !poller) {
        box.scrollTop = box.scrollHeight;
        poller = poll(refresh, "following");
        poller.now();
      } else if (!on && poller) {
        poller.stop();
        poller = null;
        showLive("paused", "not following");
      }
    }

    toggle.addEventListener("change", function () {
      setFollow(toggle.checked);
    });
    box.scrollTop = box.scrollHeight;
    if (toggle.checked) setFollow(true);
  }

  // -- filters: a select applies at once (its form's button stays for pages without script) -

  $all("select[data-autosubmit]").forEach(function (select) {
    var form = select.form;
    if (!form) return;
    function apply() {
      // "all" is an empty value: leave it out of the URL (a disabled field is not sent).
      select.disabled = select.value === "";
    }
    form.addEventListener("submit", apply);
    select.addEventListener("change", function () {
      apply();
      form.submit(); // submit() fires no submit event
    });
    // Back to this page from the history: the field must work again.
    window.addEventListener("pageshow", function () {
      select.disabled = false;
    });
  });

  // -- confirmations: Escape closes an open one ---------------------------------------------

  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    $all("details.confirm[open]").forEach(function (details) {
      details.open = false;
      var summary = $("summary", details);
      if (summary) summary.focus();
    });
  });

  var page = body.getAttribute("data-page");
  if (page === "overview") overview();
  else if (page === "job") jobPage();
  else if (page === "logs") logsPage();
  else if (page === "queues") queuesPage();
})();
