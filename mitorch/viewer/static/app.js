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

  function readJSON(id) {
    var block = document.getElementById(id);
    return block ? JSON.parse(block.textContent) : null;
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

  function liveCurves(container, curves) {
    var id = container.dataset.training;
    var timer = window.setInterval(function () {
      fetch("/api/trainings/" + encodeURIComponent(id) + "/results", {credentials: "same-origin"})
        .then(function (response) { return response.json(); })
        .then(function (answer) {
          miviewer.polls += 1;
          var same = JSON.stringify(answer.curves.charts.map(function (c) { return c.name; })) ===
                     JSON.stringify(curves.charts.map(function (c) { return c.name; }));
          if (same) {
            answer.curves.charts.forEach(function (c) {
              miviewer.charts[c.name].setData([answer.curves.epochs].concat(Object.keys(c.series).map(function (k) { return c.series[k]; })));
            });
          } else {
            drawCurves(container, answer.curves);
          }
          curves = answer.curves;
          if (!answer.live) window.clearInterval(timer);
        })
        .catch(function () {});
    }, Number(container.dataset.pollMs) || 5000);
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
      if (container.dataset.live === "1") liveCurves(container, curves);
    }
    var studyContainer = document.getElementById("study-charts");
    var study = readJSON("study-data");
    if (studyContainer && study) studyCharts(studyContainer, study);
  });
})();
