"""The report's small inline script: chart tooltips and one-player-at-a-time listening.

Progressive enhancement only: the page is complete without it.
"""

JS = r"""
(function () {
  "use strict";

  // Listening comparisons: starting one player pauses the others.
  document.addEventListener("play", function (ev) {
    document.querySelectorAll("audio").forEach(function (a) {
      if (a !== ev.target && !a.paused) { a.pause(); }
    });
  }, true);

  function readPoints(el) {
    var pts = [];
    if (el.tagName.toLowerCase() === "polyline") {
      (el.getAttribute("points") || "").trim().split(/\s+/).forEach(function (pair) {
        var xy = pair.split(",");
        if (xy.length === 2) { pts.push([+xy[0], +xy[1]]); }
      });
    } else {
      el.querySelectorAll("circle").forEach(function (c) {
        pts.push([+c.getAttribute("cx"), +c.getAttribute("cy")]);
      });
    }
    return pts;
  }

  function nearest(pts, x) {
    var lo = 0, hi = pts.length - 1;
    if (hi < 0) { return null; }
    while (hi - lo > 1) {
      var mid = (lo + hi) >> 1;
      if (pts[mid][0] < x) { lo = mid; } else { hi = mid; }
    }
    return Math.abs(pts[lo][0] - x) <= Math.abs(pts[hi][0] - x) ? pts[lo] : pts[hi];
  }

  function fmt(v) {
    if (v === 0) { return "0"; }
    var a = Math.abs(v);
    if (a >= 1e5 || a < 1e-3) { return v.toExponential(2); }
    return String(+v.toPrecision(4));
  }

  document.querySelectorAll("figure.chart-box").forEach(function (fig) {
    var svg = fig.querySelector("svg.chart");
    if (!svg || !svg.getScreenCTM) { return; }
    var d = svg.dataset;
    var x0 = +d.x0, x1 = +d.x1, y0 = +d.y0, y1 = +d.y1, log = d.log === "1";
    var L = +d.left, R = +d.right, T = +d.top, B = +d.bottom;
    var series = {};
    var order = [];
    svg.querySelectorAll("polyline.line, g.markers").forEach(function (el) {
      var name = el.getAttribute("data-name") || "";
      if (!series[name]) { series[name] = []; order.push(name); }
      series[name] = series[name].concat(readPoints(el));
    });
    order.forEach(function (n) { series[n].sort(function (a, b) { return a[0] - b[0]; }); });
    var cursor = svg.querySelector("line.cursor");
    var tip = document.createElement("div");
    tip.className = "tooltip";
    tip.hidden = true;
    tip.setAttribute("aria-hidden", "true");
    fig.appendChild(tip);

    function hide() {
      tip.hidden = true;
      if (cursor) { cursor.setAttribute("visibility", "hidden"); }
    }

    svg.addEventListener("pointermove", function (ev) {
      var ctm = svg.getScreenCTM();
      if (!ctm) { return; }
      var p = svg.createSVGPoint();
      p.x = ev.clientX; p.y = ev.clientY;
      p = p.matrixTransform(ctm.inverse());
      if (p.x < L || p.x > R) { hide(); return; }
      var rows = [];
      var stepX = null;
      order.forEach(function (name) {
        var pts = series[name];
        var tol = (R - L) * 0.03;
        // Only series that span the pointer; the nearest of their points.
        if (!pts.length || p.x < pts[0][0] - tol || p.x > pts[pts.length - 1][0] + tol) {
          return;
        }
        var q = nearest(pts, p.x);
        var v = y0 + (1 - (q[1] - T) / (B - T)) * (y1 - y0);
        if (log) { v = Math.pow(10, v); }
        if (stepX === null) { stepX = q[0]; }
        rows.push(name + ": " + fmt(v));
      });
      if (!rows.length) { hide(); return; }
      var step = Math.round(x0 + (stepX - L) / (R - L) * (x1 - x0));
      tip.textContent = "";
      var head = document.createElement("strong");
      head.textContent = "step " + step;
      tip.appendChild(head);
      rows.forEach(function (r) {
        var line = document.createElement("div");
        line.textContent = r;
        tip.appendChild(line);
      });
      if (cursor) {
        cursor.setAttribute("x1", stepX); cursor.setAttribute("x2", stepX);
        cursor.setAttribute("visibility", "visible");
      }
      var box = fig.getBoundingClientRect();
      tip.hidden = false;
      var left = ev.clientX - box.left + 14;
      if (left + tip.offsetWidth > box.width) {
        left = ev.clientX - box.left - tip.offsetWidth - 14;
      }
      tip.style.left = Math.max(0, left) + "px";
      tip.style.top = (ev.clientY - box.top + 10) + "px";
    });
    svg.addEventListener("pointerleave", hide);
  });
})();
"""
