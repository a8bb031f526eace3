// pipeloom observe, one run's page: draws the run from its JSON and, while the run is live,
// polls that JSON (never reloading the page) until the run ends or goes stale.
(function () {
  "use strict";
  var root = document.getElementById("pl-run");
  var colors = JSON.parse(root.dataset.colors);
  var tasksUrl = root.dataset.tasks;
  var taskBase = root.dataset.taskBase;
  var data = JSON.parse(document.getElementById("pl-run-data").textContent);
  var POLL_MS = 2000;

  function esc(value) {
    return String(value === null || value === undefined ? "" : value).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function ms(iso) { return iso ? Date.parse(iso) : NaN; }
  // One clock everywhere: UTC, 24-hour, as the server formats it.
  function utc(iso) { return iso ? new Date(ms(iso)).toISOString().replace("T", " ").slice(0, 19) : ""; }
  function clock(t) { return new Date(t).toISOString().slice(11, 19); }
  function duration(s) {
    if (s === null || s === undefined || isNaN(s)) { return ""; }
    if (s < 10) { return s.toFixed(2) + " s"; }
    if (s < 60) { return s.toFixed(1) + " s"; }
    var w = Math.round(s);
    if (w < 3600) { return Math.floor(w / 60) + " m " + String(w % 60).padStart(2, "0") + " s"; }
    return Math.floor(w / 3600) + " h " + String(Math.floor((w % 3600) / 60)).padStart(2, "0") + " m";
  }
  function badge(status) {
    return '<span class="pl-status pl-status-' + esc(status) + '" style="background:' +
      (colors[status] || "#e5e7eb") + '">' + esc(status) + "</span>";
  }
  function taskLink(t) {
    return '<a href="' + taskBase + t.task_id + '">' + esc(t.task_key || t.name) + "</a>";
  }
  function query(args) {
    var parts = [];
    Object.keys(args).forEach(function (k) {
      if (args[k] !== null && args[k] !== undefined) { parts.push(k + "=" + encodeURIComponent(args[k])); }
    });
    return tasksUrl + (parts.length ? "?" + parts.join("&") : "");
  }

  function facts(d) {
    var r = d.run;
    var rows = [
      ["Status", badge(r.status) + (r.stale ? " " + badge("stale") : "")],
      ["Started", esc(utc(r.started_at))],
      ["Duration", esc(duration(r.duration_s)) + (r.stale ? ' <span class="pl-muted">(to its last heartbeat)</span>' : (d.live ? ' <span class="pl-muted">(so far)</span>' : ""))],
      ["Tasks", esc(r.tasks_done) + " done / " + esc(r.tasks_failed) + " failed / " + esc(r.tasks_total) + " planned" +
        (r.tasks_not_started ? ", <b>" + esc(r.tasks_not_started) + " not started</b>" : "")],
      ["Throughput", esc(r.tasks_per_s === null ? "" : r.tasks_per_s.toFixed(1)) + " tasks/s, " + esc(r.workers || "?") + " workers"]
    ];
    if (r.stop_reason || r.stale) { rows.push(["Why it stopped", esc(r.stopped)]); }
    if (d.failures.length) {
      var f = d.failures[0];
      rows.push(["First failure", taskLink(f) + " " + badge(f.status) + ' <span class="pl-mono">' + esc(f.what) + "</span>"]);
    }
    if (r.note) { rows.push(["Note", esc(r.note)]); }
    if (r.run_error) { rows.push(["Run error", '<span class="pl-mono">' + esc(r.run_error) + "</span>"]); }
    if (r.params) { rows.push(["Parameters", '<code class="pl-mono">' + esc(r.params) + "</code>"]); }
    document.getElementById("pl-run-facts").innerHTML = rows.map(function (row) {
      return "<dt>" + row[0] + "</dt><dd>" + row[1] + "</dd>";
    }).join("");
    document.getElementById("pl-run-status").innerHTML = badge(r.shown_status);
  }

  function lanes(d) {
    var start = ms(d.start), end = ms(d.end);
    var width = Math.max(end - start, 1) / d.buckets;
    var html = d.lanes.map(function (lane) {
      var peak = 1;
      lane.buckets.forEach(function (b) {
        var n = 0; Object.keys(b).forEach(function (s) { n += b[s]; }); peak = Math.max(peak, n);
      });
      var counts = Object.keys(lane.counts).sort().map(function (s) {
        return '<a class="pl-count" href="' + query({ stage: lane.key, status: s }) + '">' + badge(s) + " " + lane.counts[s] + "</a>";
      }).join(" ");
      var cells = lane.buckets.map(function (b, i) {
        var from = new Date(start + i * width).toISOString(), to = new Date(start + (i + 1) * width).toISOString();
        var statuses = Object.keys(b), total = 0, title = [];
        statuses.forEach(function (s) { total += b[s]; title.push(b[s] + " " + s); });
        var segments = statuses.sort().map(function (s) {
          return '<span style="height:' + (100 * b[s] / peak).toFixed(1) + "%;background:" + (colors[s] || "#e5e7eb") + '"></span>';
        }).join("");
        var href = query({ stage: lane.key, from: i === 0 ? null : from, to: i === d.buckets - 1 ? null : to });
        return '<a class="pl-bucket" data-total="' + total + '" href="' + href + '" title="' + clock(ms(from)) + "\u2013" +
          clock(ms(to)) + ": " + (title.join(", ") || "nothing finished") + '">' + segments + "</a>";
      }).join("");
      return '<div class="pl-lane" data-stage="' + esc(lane.key) + '">' +
        '<div class="pl-lane-head"><a class="pl-lane-name" href="' + query({ stage: lane.key }) + '">' + esc(lane.stage) + "</a>" +
        (lane.consumes ? ' <span class="pl-muted">consumes ' + esc(lane.consumes) + "</span>" : "") +
        ' <span class="pl-lane-tasks">' + lane.tasks + " tasks</span> " + counts +
        ' <span class="pl-lane-span">span ' + esc(duration(lane.span_s)) + (lane.first_start ? " (" + clock(ms(lane.first_start)) + "\u2013" + clock(ms(lane.last_end)) + ")" : "") + "</span>" +
        ' <span class="pl-lane-rate">' + (lane.per_s === null ? "" : lane.per_s + " tasks/s") + "</span></div>" +
        '<div class="pl-lane-track">' + cells + "</div></div>";
    }).join("");
    html += '<div class="pl-axis"><span>' + clock(start) + "</span><span>" + clock(start + (end - start) / 2) +
      "</span><span>" + clock(end) + " UTC</span></div>";
    document.getElementById("pl-lanes").innerHTML = html;
  }

  function table(id, rows, head, cells, empty) {
    document.getElementById(id).innerHTML = rows.length ?
      '<table class="rows-and-columns"><thead><tr>' + head.map(function (h) { return "<th>" + h + "</th>"; }).join("") +
      "</tr></thead><tbody>" + rows.map(function (t) {
        return "<tr>" + cells(t).map(function (c) { return "<td>" + c + "</td>"; }).join("") + "</tr>";
      }).join("") + "</tbody></table>" : '<p class="pl-muted">' + empty + "</p>";
  }

  function render(d) {
    facts(d);
    lanes(d);
    var failed = d.run.tasks_failed;
    table("pl-failures", d.failures, ["task", "status", "attempts", "error"], function (t) {
      return [taskLink(t), badge(t.status), esc(t.attempt), '<span class="pl-mono">' + esc(t.what) + "</span>"];
    }, "None.");
    if (failed > d.failures.length) {
      document.getElementById("pl-failures").insertAdjacentHTML("beforeend",
        '<p><a href="' + query({ status: "error" }) + '">all ' + failed + " failed tasks</a></p>");
    }
    table("pl-retried", d.retried, ["task", "status", "attempts", "first attempt's error"], function (t) {
      return [taskLink(t), badge(t.status), esc(t.attempt), '<span class="pl-mono">' + esc(t.first_error) + "</span>"];
    }, "No task needed a second attempt.");
    if (d.retried_tasks) {
      document.getElementById("pl-retried").insertAdjacentHTML("afterbegin",
        '<p class="pl-summary">' + d.retried_tasks + " task(s) retried, " + d.failed_attempts + " failed attempt(s).</p>");
    }
    table("pl-slowest", d.slowest, ["task", "stage", "status", "started", "duration"], function (t) {
      return [taskLink(t), esc(t.stage || ""), badge(t.status), esc(utc(t.started_at)), esc(duration(t.seconds))];
    }, "No task has finished yet.");
    var live = document.getElementById("pl-live");
    if (d.run.stale) {
      live.className = "pl-live pl-warning";
      live.textContent = "Stale: no heartbeat since " + utc(d.run.last_beat) + " UTC. Its process died or is stuck; nothing below will change.";
    } else if (d.live) {
      live.className = "pl-live pl-following";
      live.textContent = "Live: following this run, updated " + utc(d.as_of) + " UTC.";
    } else {
      live.className = "pl-live";
      live.textContent = data.wasLive ? "This run ended while you watched (" + d.run.status + ")." : "";
    }
  }

  function poll() {
    fetch(root.dataset.json, { cache: "no-store" }).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    }).then(function (fresh) {
      fresh.wasLive = true;
      data = fresh;
      render(data);
      if (data.live) { setTimeout(poll, POLL_MS); }
    }).catch(function (err) {
      document.getElementById("pl-live").textContent = "Could not reach pipeloom observe (" + err.message + "); retrying.";
      setTimeout(poll, POLL_MS * 2);
    });
  }

  render(data);
  if (data.live) { setTimeout(poll, POLL_MS); }
})();
