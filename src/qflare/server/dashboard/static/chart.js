// QFLARE dashboard: a small line chart on <canvas>, no library, no network.
"use strict";
(function () {
  const series = JSON.parse(document.getElementById("series").textContent);
  function draw(canvas, points) {
    const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height, pad = 36;
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px sans-serif"; ctx.fillStyle = "#555"; ctx.strokeStyle = "#ccd";
    if (!points.length) { ctx.fillText("no data yet", w / 2 - 30, h / 2); return; }
    const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
    let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (x0 === x1) { x0 -= 1; x1 += 1; } if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
    const X = x => pad + (x - x0) / (x1 - x0) * (w - 2 * pad), Y = y => h - pad + 10 - (y - y0) / (y1 - y0) * (h - 2 * pad);
    ctx.beginPath(); ctx.moveTo(pad, 8); ctx.lineTo(pad, h - pad + 10); ctx.lineTo(w - pad, h - pad + 10); ctx.stroke();
    for (const v of [y0, (y0 + y1) / 2, y1]) ctx.fillText(v.toPrecision(3), 2, Y(v) + 4);
    ctx.fillText(String(series.xlabel[canvas.dataset.series] || "round"), w / 2 - 15, h - 4);
    ctx.strokeStyle = "#1f5fbf"; ctx.lineWidth = 2; ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(X(p[0]), Y(p[1])) : ctx.moveTo(X(p[0]), Y(p[1]))));
    ctx.stroke(); ctx.fillStyle = "#1f5fbf";
    for (const p of points) { ctx.beginPath(); ctx.arc(X(p[0]), Y(p[1]), 3, 0, 7); ctx.fill(); }
  }
  for (const canvas of document.querySelectorAll("canvas[data-series]")) draw(canvas, series[canvas.dataset.series] || []);
})();
