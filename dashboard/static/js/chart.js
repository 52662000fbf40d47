// One store's chart with uPlot: actual sales and the version's forecast for the last weeks, the forecast
// of the next days with its interval band, and promotions, holidays and closed days as day columns.

const COLORS = { line: "#1f6fb4", band: "rgba(31, 111, 180, 0.18)", actual: "#222", past: "#6a9fd0",
                 promo: "rgba(245, 158, 11, 0.22)", holiday: "#8e44ad", closed: "rgba(120, 120, 120, 0.16)",
                 today: "#1f6fb4" };
const DAY = 86400;
const fmt = (v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en-US"));

/** The series arrays of the chart (x in seconds, UTC midnight); nulls where nothing is drawn. The numbers are
 * the API's: a closed day (shaded) is drawn at 0, as the API answers it, forecast and band alike. */
export function series(rows) {
  const x = rows.map((r) => Date.parse(`${r.date}T00:00:00Z`) / 1000);
  return [
    x,
    rows.map((r) => (r.past && r.actual !== null ? r.actual : null)),
    rows.map((r) => (r.past ? r.value : null)),
    rows.map((r) => (!r.past ? r.value : null)),
    rows.map((r) => r.lower),
    rows.map((r) => r.upper),
  ];
}

function dayColumns(u, rows) {
  const { ctx } = u;
  const { top, height } = u.bbox;
  const x0 = u.bbox.left, x1 = u.bbox.left + u.bbox.width;
  ctx.save();
  rows.forEach((r, i) => {
    const x = u.data[0][i];
    const a = Math.max(x0, u.valToPos(x - DAY / 2, "x", true)), b = Math.min(x1, u.valToPos(x + DAY / 2, "x", true));
    if (b <= a) return;
    if (!r.open) { ctx.fillStyle = COLORS.closed; ctx.fillRect(a, top, b - a, height); }
    if (r.promo) { ctx.fillStyle = COLORS.promo; ctx.fillRect(a, top, b - a, height); }
    if (r.holiday) {
      ctx.strokeStyle = COLORS.holiday; ctx.lineWidth = 2 * devicePixelRatio;
      ctx.beginPath(); ctx.moveTo((a + b) / 2, top); ctx.lineTo((a + b) / 2, top + height); ctx.stroke();
    }
  });
  const today = rows.findIndex((r) => !r.past);
  if (today > 0) {
    const t = u.valToPos(u.data[0][today] - DAY / 2, "x", true);
    ctx.strokeStyle = COLORS.today; ctx.setLineDash([4 * devicePixelRatio, 4 * devicePixelRatio]);
    ctx.lineWidth = devicePixelRatio;
    ctx.beginPath(); ctx.moveTo(t, top); ctx.lineTo(t, top + height); ctx.stroke();
  }
  ctx.restore();
}

/** Draw (or redraw) the chart of ``rows`` into ``el``; the uPlot instance is kept as ``el.uplot``. */
export function drawChart(el, rows, title) {
  if (el.uplot) { el.uplot.destroy(); el.uplot = null; }
  el.textContent = "";
  const data = series(rows);
  const width = Math.max(320, el.clientWidth || el.parentElement.clientWidth || 800);
  const opts = {
    title, width, height: 260,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(1, hi) * 1.08] } },
    series: [
      { label: "date", value: (u, v) => (v === null ? "–" : new Date(v * 1000).toISOString().slice(0, 10)) },
      { label: "actual sales", stroke: COLORS.actual, width: 1.5, points: { show: true, size: 5 }, value: (u, v) => fmt(v) },
      { label: "forecast then", stroke: COLORS.past, dash: [5, 4], width: 1.5, value: (u, v) => fmt(v) },
      { label: "forecast", stroke: COLORS.line, width: 2, points: { show: true, size: 6 }, value: (u, v) => fmt(v) },
      { label: "lower", stroke: "rgba(31, 111, 180, 0.35)", width: 1, value: (u, v) => fmt(v) },
      { label: "upper", stroke: "rgba(31, 111, 180, 0.35)", width: 1, value: (u, v) => fmt(v) },
    ],
    bands: [{ series: [5, 4], fill: COLORS.band }],
    axes: [{}, { size: 60, values: (u, ticks) => ticks.map((v) => (v >= 1000 ? `${Math.round(v / 100) / 10}k` : v)) }],
    hooks: { drawClear: [(u) => dayColumns(u, rows)] },
  };
  const u = new uPlot(opts, data, el);
  el.uplot = u;
  const future = rows.map((r, i) => (!r.past ? i : -1)).filter((i) => i >= 0);
  el.dataset.points = String(future.length);
  el.dataset.forecastPoints = String(future.filter((i) => data[3][i] !== null).length);
  el.dataset.bandPoints = String(future.filter((i) => data[4][i] !== null && data[5][i] !== null).length);
  el.dataset.pastPoints = String(rows.length - future.length);
  el.dataset.actualPoints = String(data[1].filter((v) => v !== null).length);
  return u;
}

/** Swatches for the day columns this chart shows. */
export function legendExtra(el, rows) {
  const items = [];
  if (rows.some((r) => r.promo)) items.push(["promotion", COLORS.promo]);
  if (rows.some((r) => r.holiday)) items.push(["holiday", COLORS.holiday]);
  if (rows.some((r) => !r.open)) items.push(["closed", COLORS.closed]);
  el.textContent = "";
  for (const [label, color] of items) {
    const span = document.createElement("span");
    const sw = document.createElement("i");
    sw.style.background = color;
    span.append(sw, label);
    el.append(span);
  }
}

/** Keep the chart as wide as its card. */
export function followWidth(el) {
  if (el.resizeObserver) return;
  el.resizeObserver = new ResizeObserver(() => {
    if (el.uplot && el.clientWidth && Math.abs(el.uplot.width - el.clientWidth) > 4) {
      el.uplot.setSize({ width: el.clientWidth, height: 260 });
    }
  });
  el.resizeObserver.observe(el);
}
