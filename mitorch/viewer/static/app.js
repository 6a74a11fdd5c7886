// miviewer: confirm before actions, tick-all boxes, and the uPlot charts (live on a running
// training's page). No inline script anywhere: the page's data sits in application/json blocks.
(function () {
  "use strict";
  var PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#7f7f7f", "#bcbd22"];
  var miviewer = window.miviewer = {charts: {}, polls: 0};

  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var message = button && button.dataset.confirm;
    if (!message) return;
    var form = event.target;
    var ticked = form.querySelectorAll("input[name=id]:checked, input[type=hidden][name=id]").length;
    if (!ticked) { event.preventDefault(); window.alert("Tick one or more trainings first."); return; }
    if (!window.confirm(message.replace("{n}", ticked))) event.preventDefault();
  });

  document.addEventListener("change", function (event) {
    if (!event.target.classList.contains("select-all")) return;
    var table = event.target.closest("table");
    table.querySelectorAll("tbody input[name=id]").forEach(function (box) { box.checked = event.target.checked; });
  });

  // A page's data: a <script type="application/json"> block, or a data-json attribute where htmx
  // swaps the element in (it drops script elements).
  function readJSON(id) {
    var block = document.getElementById(id);
    return block ? JSON.parse(block.dataset.json || block.textContent) : null;
  }

  function width(container) { return Math.max(Math.min(container.clientWidth - 16, 560), 280); }

  function chart(container, name, x, series, options) {
    options = options || {};
    var box = document.createElement("figure");
    box.className = "chart";
    box.dataset.chart = name;
    container.appendChild(box);
    var names = Object.keys(series);
    var opts = {
      title: name, width: width(container), height: 220,
      scales: {x: {time: false}, y: options.log ? {distr: 3} : {}},
      // Whole epochs (and trial numbers) only on the x axis.
      axes: [{label: options.xLabel || "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]}, {size: 60}],
      series: [{label: options.xLabel || "epoch"}].concat(names.map(function (label, i) {
        var style = (options.styles || {})[label] || {};
        return {label: options.labels ? options.labels[i] : label, stroke: style.stroke || PALETTE[i % PALETTE.length],
                width: 1.5, dash: style.dash, spanGaps: true,
                points: {show: style.scatter || options.points || x.length < 30},
                paths: style.scatter ? function () { return null; } : undefined};
      }))
    };
    var data = [x].concat(names.map(function (label) { return series[label]; }));
    var plot = new uPlot(opts, data, box);
    miviewer.charts[name] = plot;
    return plot;
  }

  function drawCurves(container, curves, labels) {
    container.textContent = "";
    miviewer.charts = {};
    if (!curves.charts.length) {
      var none = document.createElement("p");
      none.className = "none";
      none.textContent = "no epoch yet";
      container.appendChild(none);
    }
    curves.charts.forEach(function (c) {
      chart(container, c.name, curves.epochs, c.series, {labels: labels && Object.keys(c.series).map(function (k) { return labels[k] || k; })});
    });
  }

  // Python's "%.Ng" as the num filter prints numbers, for the rows a poll adds.
  function num(value, digits) {
    if (value === null || value === undefined) return "";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value)) return String(value);
    var parts = value.toExponential(digits - 1).split("e");  // rounded first, as Python does
    var power = Number(parts[1]);
    if (power < -4 || power >= digits) {
      return parts[0].replace(/\.?0+$/, "") + "e" + (power < 0 ? "-" : "+") + String(Math.abs(power)).padStart(2, "0");
    }
    return value.toFixed(Math.max(digits - 1 - power, 0)).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
  }

  function duration(seconds) {
    seconds = Math.max(Math.floor(seconds), 0);
    if (seconds < 120) return seconds + " s";
    if (seconds < 7200) return Math.floor(seconds / 60) + " min";
    if (seconds < 172800) return Math.floor(seconds / 3600) + " h";
    return Math.floor(seconds / 86400) + " d";
  }

  function epochRow(result, metrics) {
    var val = result.val || {};
    var texts = [String(result.epoch), num(result.train_loss, 4), num(result.lr, 3),
                 num(result.duration_s, 3) + (result.duration_s ? " s" : "")];
    var row = document.createElement("tr");
    texts.concat(metrics.map(function (m) { return num(val[m], 4); })).forEach(function (text) {
      var cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    });
    return row;
  }

  // A live training's page: one request per poll for what changed since its last epoch. What the
  // page cannot extend in place (a new status or attempt, a new metric, the end of the run) makes
  // htmx render the live part and the details again (miviewer-refresh on #live).
  function followLive(container) {
    var live = document.getElementById("live");
    var wait = Number(container.dataset.pollMs) || 5000;
    var url = "/api/trainings/" + encodeURIComponent(container.dataset.training) + "?after=";
    var state = readJSON("live-state"), curves = readJSON("curves-data");

    function lastEpoch() { return curves.epochs.length ? curves.epochs[curves.epochs.length - 1] : -1; }

    function needsRefresh(update) {
      var log = document.getElementById("log");
      return !update.live || update.training.status !== state.status || update.training.attempt !== state.attempt ||
        update.metrics.some(function (m) { return state.metrics.indexOf(m) < 0; }) ||
        update.curves.charts.some(function (c) { return !miviewer.charts[c.name]; }) ||
        (update.log.text !== null) !== (log !== null && log.tagName === "PRE");
    }

    function extendCurves(added) {
      var byName = {};
      added.charts.forEach(function (c) { byName[c.name] = c.series; });
      curves.epochs = curves.epochs.concat(added.epochs);
      curves.charts.forEach(function (c) {
        var names = Object.keys(c.series);
        names.forEach(function (k) {
          var more = (byName[c.name] || {})[k] || added.epochs.map(function () { return null; });
          c.series[k] = c.series[k].concat(more);
        });
        miviewer.charts[c.name].setData([curves.epochs].concat(names.map(function (k) { return c.series[k]; })));
      });
    }

    function extendPage(update) {
      var training = update.training;
      document.getElementById("priority").textContent = training.priority === null ? "" : String(training.priority);
      var status = document.getElementById("status");
      var badge = document.createElement("span");
      badge.className = "status s-" + training.status;
      badge.textContent = training.status;
      status.replaceChildren(badge);
      if (training.cancel_requested && training.status === "running") status.append(" (cancel requested)");
      var heartbeat = document.getElementById("heartbeat");
      if (heartbeat && update.heartbeat_s !== null) heartbeat.textContent = duration(update.heartbeat_s) + " ago";
      var rows = document.querySelector("#epochs tbody");
      if (update.results.length) rows.querySelectorAll("td.none").forEach(function (cell) { cell.parentNode.remove(); });
      update.results.forEach(function (result) { rows.appendChild(epochRow(result, state.metrics)); });
      document.getElementById("epoch-count").textContent = String(rows.querySelectorAll("tr").length);
      extendCurves(update.curves);
      if (update.log.text !== null) document.getElementById("log").textContent = update.log.text;
    }

    function poll() {
      fetch(url + lastEpoch(), {credentials: "same-origin"})
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (update) {
          miviewer.polls += 1;
          if (needsRefresh(update)) {
            htmx.trigger(live, "miviewer-refresh");  // the next poll waits for its answer
            return;
          }
          extendPage(update);
          window.setTimeout(poll, wait);
        })
        .catch(function () { window.setTimeout(poll, wait); });
    }

    // htmx swaps #live (and #details out of band) before it fires afterRequest, failed or not.
    live.addEventListener("htmx:afterRequest", function (event) {
      if (event.detail.successful) {
        state = readJSON("live-state");
        curves = readJSON("curves-data");
        drawCurves(container, curves);
      }
      if (state.live) window.setTimeout(poll, wait);
      else container.dataset.live = "0";
    });
    window.setTimeout(poll, wait);
  }

  function studyCharts(container, study) {
    if (study.history.length) {
      chart(container, "optimization history", study.history.map(function (h) { return h.number; }),
            {value: study.history.map(function (h) { return h.value; }), "best so far": study.history.map(function (h) { return h.best; })},
            {xLabel: "trial", styles: {"best so far": {stroke: "#d62728"}, value: {stroke: "#1f77b4", scatter: true}}});
    }
    if (study.intermediate.length) {
      var steps = Array.from(new Set([].concat.apply([], study.intermediate.map(function (t) { return t.steps; })))).sort(function (a, b) { return a - b; });
      var series = {}, styles = {};
      study.intermediate.forEach(function (t, i) {
        var byStep = {};
        t.steps.forEach(function (s, k) { byStep[s] = t.values[k]; });
        var label = "trial " + t.number + (t.state === "pruned" ? " (pruned)" : "");
        series[label] = steps.map(function (s) { return s in byStep ? byStep[s] : null; });
        styles[label] = t.state === "pruned" ? {stroke: "#999", dash: [4, 4]} : {stroke: PALETTE[i % PALETTE.length]};
      });
      chart(container, "intermediate values (" + study.metric + ")", steps, series, {styles: styles});
    }
  }

  function figure(container, name) {
    var box = document.createElement("figure");
    box.className = "chart";
    box.dataset.chart = name;
    container.appendChild(box);
    return box;
  }

  // A multi-objective job: its complete trials in the plane of the first two objectives, x
  // ascending; one series per kind (on the front, dominated, breaking a constraint), so the
  // legend tells them apart; the x value's legend entry names the trial under the cursor.
  function paretoScatter(container, pareto) {
    var points = pareto.points.slice().sort(function (a, b) { return a.values[0] - b.values[0] || a.number - b.number; });
    var x = points.map(function (p) { return p.values[0]; });
    function only(test) { return points.map(function (p) { return test(p) ? p.values[1] : null; }); }
    var kinds = [
      {label: "Pareto front", stroke: "#d62728", line: true, data: only(function (p) { return p.front; })},
      {label: "dominated", stroke: "#1f77b4", data: only(function (p) { return p.feasible && !p.front; })},
      {label: "infeasible", stroke: "#999", fill: "#fff", data: only(function (p) { return !p.feasible; })}];
    var name = pareto.metrics[0] + " vs " + pareto.metrics[1];
    var opts = {
      title: name, width: width(container), height: 260, scales: {x: {time: false}},
      axes: [{label: pareto.metrics[0]}, {label: pareto.metrics[1], size: 90}],
      series: [{label: pareto.metrics[0], value: function (u, v, si, i) {
        return i === null || i === undefined ? "--" : "trial " + points[i].number + ": " + num(v, 4);
      }}].concat(kinds.map(function (k) {
        return {label: k.label, stroke: k.stroke, width: 1.5, spanGaps: true,
                points: {show: true, size: 8, fill: k.fill || k.stroke, stroke: k.stroke},
                paths: k.line ? undefined : function () { return null; }};
      }))
    };
    miviewer.charts[name] = new uPlot(opts, [x].concat(kinds.map(function (k) { return k.data; })), figure(container, name));
  }

  // Each complete trial as a line across its parameters (each scaled to its trials' range) to its
  // first objective; the better its objective the redder, a trial breaking a constraint dashed grey.
  function parallelCoordinates(container, parallel) {
    var labels = parallel.axes.map(function (a) { return a.name + " (" + a.low + "–" + a.high + ")"; })
      .concat([parallel.metric]);
    var values = parallel.trials.map(function (t) { return t.value; });
    var low = Math.min.apply(null, values), high = Math.max.apply(null, values);
    var maximize = parallel.direction !== "minimize";
    var x = labels.map(function (_, i) { return i; });
    var series = parallel.trials.map(function (t) {
      var good = high > low ? (t.value - low) / (high - low) : 1;
      if (!maximize) good = 1 - good;
      var stroke = t.feasible ? "rgb(" + Math.round(40 + 200 * good) + ",60," + Math.round(240 - 200 * good) + ")" : "#999";
      return {label: "trial " + t.number, stroke: stroke, width: 1.5, dash: t.feasible ? undefined : [4, 4],
              points: {show: true}, value: function (u, v, si, i) { return i === x.length - 1 ? num(t.value, 4) : num(v, 3); }};
    });
    var data = [x].concat(parallel.trials.map(function (t) {
      return t.coords.concat([high > low ? (t.value - low) / (high - low) : 0.5]);
    }));
    var name = "parameters against " + parallel.metric;
    var opts = {
      title: name, width: width(container), height: 260, focus: {alpha: 0.3}, cursor: {focus: {prox: 16}},
      scales: {x: {time: false, range: [-0.2, x.length - 0.8]}, y: {range: [-0.05, 1.05]}},
      axes: [{incrs: [1], values: function (u, splits) { return splits.map(function (i) { return labels[i] || ""; }); }},
             {label: "scaled to its range", size: 50}],
      series: [{label: "axis", value: function (u, v) { return v === null || v === undefined ? "--" : labels[v]; }}]
        .concat(series)
    };
    miviewer.charts[name] = new uPlot(opts, data, figure(container, name));
  }

  document.addEventListener("DOMContentLoaded", function () {
    var container = document.getElementById("charts");
    var curves = readJSON("curves-data");
    if (container && curves) {
      var labels = null;
      if (container.dataset.compare) {
        labels = {};
        document.querySelectorAll("#compared tbody tr").forEach(function (row, i) {
          var id = row.querySelector("a.id").textContent;
          labels[id] = id.slice(-8) + " " + (row.querySelector("td:nth-child(2)").textContent.replace(id, "").trim());
          row.querySelector(".swatch").style.background = PALETTE[i % PALETTE.length];
        });
      }
      drawCurves(container, curves, labels);
      if (container.dataset.live === "1") followLive(container);
    }
    var studyContainer = document.getElementById("study-charts");
    var study = readJSON("study-data");
    if (studyContainer && study) studyCharts(studyContainer, study);
    var paretoContainer = document.getElementById("pareto-charts");
    var pareto = readJSON("pareto-data");
    if (paretoContainer && pareto && pareto.points.length) {
      if (pareto.metrics.length > 1) paretoScatter(paretoContainer, pareto);
      if (pareto.parallel.params.length) parallelCoordinates(paretoContainer, pareto.parallel);
    }
  });
})();
